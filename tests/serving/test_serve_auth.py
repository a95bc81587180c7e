"""Optional bearer-token authentication and CORS: 401 with WWW-Authenticate for a missing or wrong
token, 200 with the right one, open probes, /metrics protectable, clear errors for a bad key file."""

import pytest
from fastapi.testclient import TestClient
from serving_testkit import FakeLoader, image_bytes, make_settings, random_image, wait_ready

from serving.__main__ import main as serve_main
from serving.app import create_app
from serving.auth import AuthConfigError

TOKEN = "s3cret-token-0123456789abcdef"


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "api.key"
    path.write_text(TOKEN + "\n")
    return path


def auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def test_missing_or_wrong_token_is_401_and_the_right_one_200(tmp_path, key_file):
    settings = make_settings(tmp_path, api_key_file=key_file)
    with TestClient(create_app(settings, loader=FakeLoader())) as client:
        assert client.get("/healthz").status_code == 200  # probes stay open
        wait_ready(client)
        missing = client.get("/v1/models")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="clda-deploy"'
        assert missing.json()["error"]["message"] == "this endpoint needs 'Authorization: Bearer <token>'"
        wrong = client.get("/v1/models", headers=auth("nope-nope-nope-nope"))
        assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
        assert client.get("/v1/models", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert client.get("/v1/models", headers=auth()).status_code == 200
        body = image_bytes(random_image(32, 48))
        headers = {"content-type": "image/png"}
        assert client.post("/v1/segment", content=body, headers=headers).status_code == 401
        assert client.post("/v1/segment", content=body, headers={**headers, **auth()}).status_code == 200
        metrics = client.get("/metrics")  # open unless protect_metrics
        assert metrics.status_code == 200
        assert 'clda_requests_total{backend="none",model="none",status="401"} 1.0' in metrics.text
        assert client.get("/").status_code == 200  # the upload page itself reveals nothing


def test_metrics_can_be_protected_and_auth_is_off_by_default(tmp_path, key_file):
    settings = make_settings(tmp_path, api_key_file=key_file, protect_metrics=True)
    with TestClient(create_app(settings, loader=FakeLoader())) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=auth()).status_code == 200
        assert client.get("/readyz").status_code in (200, 503)  # open either way
    with TestClient(create_app(make_settings(tmp_path), loader=FakeLoader())) as client:
        wait_ready(client)
        assert client.get("/v1/models").status_code == 200


def test_cors_is_off_by_default_and_configurable(tmp_path):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(make_settings(tmp_path), loader=FakeLoader())) as client:
        assert "access-control-allow-origin" not in client.options("/v1/segment", headers=preflight).headers
    settings = make_settings(tmp_path, cors_origins="https://app.example")
    with TestClient(create_app(settings, loader=FakeLoader())) as client:
        response = client.options("/v1/segment", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        answer = client.post("/v1/segment", content=image_bytes(random_image(32, 32)),
                             headers={"Origin": "https://app.example", "Content-Type": "image/png"})  # fmt: skip
        exposed = {name.strip() for name in answer.headers["access-control-expose-headers"].split(",")}
        assert {"X-Model", "X-Inference-Time-Ms", "X-Total-Time-Ms", "X-Batch-Size"} <= exposed  # a browser reads them


@pytest.mark.parametrize(
    "content, fragment", [(None, "does not exist"), ("short", "holds 5 characters"), ("two words x" * 3, "one line")]
)
def test_a_bad_key_file_is_refused_with_its_name(tmp_path, capsys, content, fragment):
    path = tmp_path / "api.key"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AuthConfigError, match=fragment):
        create_app(make_settings(tmp_path, api_key_file=path), loader=FakeLoader())
    with pytest.raises(SystemExit) as exit_info:
        serve_main(["--models", str(tmp_path / "export"), "--api-key-file", str(path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(path) in error and fragment in error
