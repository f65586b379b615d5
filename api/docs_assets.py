"""Swagger UI's files, served by the app itself (from the flask-swagger-ui package), so /docs
works without internet. flask-smorest renders /docs; OPENAPI_SWAGGER_UI_URL points here."""

from __future__ import annotations

import os

import flask_swagger_ui
from flask import Blueprint

from casstore.config import Settings

ASSETS_PATH = "/docs/assets"
ASSETS_DIR = os.path.join(os.path.dirname(flask_swagger_ui.__file__), "dist")


def url(settings: Settings) -> str:
    return f"{settings.public_url.rstrip('/')}{ASSETS_PATH}/"


def register(app) -> None:
    app.register_blueprint(Blueprint("swagger_ui_assets", __name__, static_folder=ASSETS_DIR,
                                     static_url_path=ASSETS_PATH))
