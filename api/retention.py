"""/v1/packages/<id>/retention, /holds, /events: retention, extension, holds and the event trail."""

from __future__ import annotations

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import EXCLUDE

from casstore.errors import InvalidInput

from . import context
from .schemas import EventList, ExtendRequest, HoldList, HoldOut, ReasonBody, ReasonQuery, RetentionOut

blp = Blueprint("retention", __name__, url_prefix="/v1/packages", description="Retention, holds and events")


@blp.route("/<string:package_id>/retention")
class Retention(MethodView):
    @blp.response(200, RetentionOut)
    def get(self, package_id):
        """Class, expiry, active holds, and whether the package is eligible for deletion (and why not)."""
        return context.store().retention.status(package_id)


@blp.route("/<string:package_id>/retention/extend")
class Extend(MethodView):
    @blp.arguments(ExtendRequest)
    @blp.response(200, RetentionOut)
    def post(self, body, package_id):
        """Extend retention: one of expires_at, days, or a retention_class that keeps longer; never shorter (409)."""
        return context.store().retention.extend(package_id, actor=context.actor(), **body)


@blp.route("/<string:package_id>/holds")
class Holds(MethodView):
    @blp.response(200, HoldList)
    def get(self, package_id):
        """Every hold of the package, released ones included."""
        return {"items": context.store().retention.holds(package_id)}

    @blp.arguments(ReasonBody)
    @blp.response(201, HoldOut)
    def post(self, body, package_id):
        """Place a hold: the package is never eligible for deletion while it holds one."""
        return context.store().retention.place_hold(package_id, actor=context.actor(), reason=body["reason"])


@blp.route("/<string:package_id>/holds/<string:hold_id>")
class HoldItem(MethodView):
    @blp.arguments(ReasonQuery, location="query", unknown=EXCLUDE)
    @blp.response(200, HoldOut)
    def delete(self, query, package_id, hold_id):
        """Release a hold; the reason comes as ?reason= or a JSON body {"reason": ...}."""
        reason = query.get("reason") or _json_reason()
        return context.store().retention.release_hold(package_id, hold_id, actor=context.actor(), reason=reason)


@blp.route("/<string:package_id>/events")
class Events(MethodView):
    @blp.response(200, EventList)
    def get(self, package_id):
        """The package's retention and audit events, oldest first."""
        return {"items": context.store().retention.events(package_id)}


def _json_reason() -> str:
    if not request.data:
        raise InvalidInput("releasing a hold needs a reason (?reason= or a JSON body)")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("reason"), str) or not body["reason"].strip():
        raise InvalidInput("releasing a hold needs a reason (?reason= or a JSON body)")
    return body["reason"]
