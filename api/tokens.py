"""/v1/tokens: operators create, list and revoke API tokens (the CLI's `token` commands, over HTTP)."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from casstore.services.tokens import expiry_in_days

from . import context
from .schemas import TokenCreate, TokenCreated, TokenList, TokenOut

blp = Blueprint("tokens", __name__, url_prefix="/v1/tokens", description="API tokens (operators)")


@blp.route("")
class Tokens(MethodView):
    @blp.response(200, TokenList)
    def get(self):
        """Every token, oldest first; never a secret (the store keeps only hashes)."""
        return {"items": context.store().tokens.list()}

    @blp.arguments(TokenCreate)
    @blp.response(201, TokenCreated)
    def post(self, body):
        """Create a token; the answer is the only place its secret ever appears."""
        token, secret = context.store().tokens.create(
            name=body["name"], role=body["role"], producers=body["producers"],
            expires_at=expiry_in_days(body.get("expires_in_days")), actor=context.actor())
        return {**{k: getattr(token, k) for k in TokenOut().fields}, "token": secret}


@blp.route("/<string:token_id>")
class TokenItem(MethodView):
    @blp.response(200, TokenOut)
    def delete(self, token_id):
        """Revoke a token: its next request is refused (401) by every server. Revoking twice changes nothing."""
        return context.store().tokens.revoke(token_id, actor=context.actor())
