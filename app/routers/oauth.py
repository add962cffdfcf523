from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app import errors, ratelimit
from app.deps import Db
from app.models.schemas import Jwks, TokenResponse
from app.services import oauth

router = APIRouter(tags=["oauth"])


def token_endpoint_url(request: Request) -> str:
    public = request.app.state.settings.public_url
    if public:
        return f"{public}/oauth/token"
    return str(request.url.replace(query=None, fragment=None))


@router.post(
    "/oauth/token",
    summary="Exchange a private_key_jwt client assertion for an access token",
    response_model=TokenResponse,
    responses=errors.responses(400, 401, 413, 429),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["grant_type", "client_assertion_type", "client_assertion"],
                        "properties": {
                            "grant_type": {"type": "string", "enum": ["client_credentials"]},
                            "client_assertion_type": {
                                "type": "string",
                                "enum": [oauth.ASSERTION_TYPE],
                            },
                            "client_assertion": {"type": "string"},
                            "scope": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
async def token(request: Request, db: Db) -> JSONResponse:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        raise errors.OAuthError(
            "invalid_request", "the body must be application/x-www-form-urlencoded", status=400
        )
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if any("\x00" in v for v in fields.values()):
        raise errors.OAuthError("invalid_request", "NUL characters are not allowed", status=400)
    body, issued_to = await oauth.issue_token(
        db,
        fields,
        audience=token_endpoint_url(request),
        issuer=request.app.state.issuer,
        settings=request.app.state.settings,
        server_keys=request.app.state.server_keys,
    )
    await ratelimit.limit_token_issue(request, db, issued_to)
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


@router.get(
    "/.well-known/jwks.json",
    summary="The server's access-token verification keys",
    response_model=Jwks,
)
async def jwks(request: Request) -> Jwks:
    return oauth.jwks(request.app.state.server_keys)
