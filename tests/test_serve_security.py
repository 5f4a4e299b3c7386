"""Who may talk to the playground: the Host allow-list (DNS rebinding), the API key on every data route,
no page that loads code from elsewhere, and a warning when a server is open beyond this machine."""

import httpx
import pytest

from llmlab.cli import main
from llmlab.serve import BackgroundServer, ModelRegistry, create_app
from llmlab.serve.security import allowed_hosts, exposure_warning, host_name
from llmlab.serve.tiny import make_tiny_checkpoint

pytestmark = pytest.mark.network_local


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_checkpoint(root / "tiny")
    return root


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    app = create_app(ModelRegistry(models_dir, imported=False), history_path=tmp_path_factory.mktemp("h") / "h.sqlite")
    with BackgroundServer(app) as srv:
        yield srv


def test_host_names_parse_with_and_without_ports():
    assert host_name("Example.COM:8000") == "example.com" and host_name("[::1]:80") == "::1"
    assert host_name("::1") == "::1" and host_name("localhost.") == "localhost"
    assert allowed_hosts("0.0.0.0", ["lan.box:9"]) == {"localhost", "127.0.0.1", "::1", "lan.box"}
    assert "10.0.0.5" in allowed_hosts("10.0.0.5")


def test_a_rebinding_host_header_is_refused_before_any_data(server):
    port = server.url.rsplit(":", 1)[1]
    for path in ("/api/conversations", "/v1/models", "/"):
        r = httpx.get(server.url + path, headers={"host": f"attacker.example:{port}"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "host_not_allowed"
        assert "--allowed-host attacker.example" in r.json()["error"]["message"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert httpx.get(server.url + "/api/conversations", headers={"host": host}).status_code == 200


def test_the_api_key_guards_every_route_that_reveals_data(models_dir):
    with BackgroundServer(create_app(ModelRegistry(models_dir, imported=False), api_key="k")) as srv:
        for path in ("/v1/models", "/api/conversations", "/api/status", "/api/tokenizers", "/openapi.json"):
            assert httpx.get(srv.url + path).status_code == 401, path
            assert httpx.get(srv.url + path, headers={"authorization": "Bearer k"}).status_code == 200, path
        health = httpx.get(srv.url + "/health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}  # names no model
        assert httpx.get(srv.url + "/docs").status_code == 404  # Swagger UI would load from a CDN
        assert "/v1/chat/completions" in httpx.get(srv.url + "/openapi.json",
                                                   headers={"authorization": "Bearer k"}).json()["paths"]


def test_serving_beyond_loopback_without_a_key_warns(tmp_path, monkeypatch, capsys):
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("::1", None) is None
    assert exposure_warning("0.0.0.0", "key") is None and "--api-key" in exposure_warning("0.0.0.0", None)
    served = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMLAB_API_KEY", raising=False)
    monkeypatch.setattr("llmlab.serve.run_server", lambda app, host, port: served.append(app))
    assert main(["serve", "--tiny", "--no-smollm2", "--host", "0.0.0.0", "--allowed-host", "lan.box",
                 "--history", str(tmp_path / "h.sqlite")]) == 0
    out = capsys.readouterr()
    assert "without an API key" in out.err and "answering requests for: 127.0.0.1, ::1, lan.box, localhost" in out.out
    with BackgroundServer(served[0]) as srv:
        assert httpx.get(srv.url + "/api/conversations", headers={"host": "lan.box:8000"}).status_code == 200
        assert httpx.get(srv.url + "/api/conversations", headers={"host": "other.box"}).status_code == 400
