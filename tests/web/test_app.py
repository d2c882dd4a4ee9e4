"""The application's frame: errors as one line (a page, or JSON under /api/), security headers,
static assets shipped in the package, and who the dashboard believes the viewer is."""
from __future__ import annotations

from orchestra.config import WebConfig
from orchestra.web.viewer import viewer_for
from tests.web.conftest import WebClient


def test_an_unknown_page_is_a_404_page_and_an_unknown_api_route_is_json(web: WebClient) -> None:
    page = web.get("/no/such/page")
    assert page.status_code == 404
    assert "no page at /no/such/page" in page.text and "<!doctype html>" in page.text
    api = web.get("/api/no/such/route")
    assert api.status_code == 404 and api.json() == {"error": "no page at /api/no/such/route"}


def test_every_response_carries_the_security_headers(web: WebClient) -> None:
    headers = web.get("/static/orchestra.css").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"


def test_static_assets_ship_in_the_package(web: WebClient) -> None:
    for name, kind in (("orchestra.css", "text/css"), ("orchestra.js", "javascript"), ("favicon.svg", "svg")):
        response = web.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"], name


def test_the_user_header_counts_only_from_a_trusted_proxy() -> None:
    config = WebConfig(trusted_proxies=("127.0.0.1/32", "10.0.0.0/8"))
    assert viewer_for(config, "127.0.0.1", "alice").user == "alice"
    assert viewer_for(config, "10.1.2.3", "alice@example.org").user == "alice"
    assert viewer_for(config, "127.0.0.2", "alice").user is None  # not a proxy: as if absent
    assert viewer_for(config, "127.0.0.1", "Robert'); DROP").user is None  # not a user name
    assert viewer_for(WebConfig(), "127.0.0.1", "alice").user is None  # no proxy configured
    assert viewer_for(config, "127.0.0.1", "root", frozenset({"root"})).admin


def test_a_viewer_sees_private_parts_of_their_own_tasks_only() -> None:
    config = WebConfig(trusted_proxies=("127.0.0.1",))
    alice = viewer_for(config, "127.0.0.1", "alice")
    assert alice.sees_private("alice") and not alice.sees_private("bob")
    assert not viewer_for(config, "127.0.0.1", None).sees_private("alice")
    assert viewer_for(WebConfig(public=True), None, None).sees_private("bob")
    assert viewer_for(config, "127.0.0.1", "root", frozenset({"root"})).sees_private("bob")


def test_the_header_from_an_untrusted_address_is_ignored(web: WebClient) -> None:
    assert ">alice<" in web.get("/no/such/page", "alice").text
    assert ">alice<" not in web.get("/no/such/page", "alice", trusted=False).text


def test_a_user_header_sent_twice_vouches_for_nobody(web: WebClient) -> None:
    """A proxy that appends its header to the browser's own would make two: the first may be forged."""
    import httpx

    with httpx.Client(base_url=web.url) as client:
        twice = client.get("/no/such/page", headers=[("X-Forwarded-User", "root"), ("X-Forwarded-User", "alice")])
        once = client.get("/no/such/page", headers=[("X-Forwarded-User", "alice")])
    assert ">alice<" in once.text
    assert ">anonymous<" in twice.text and ">root" not in twice.text
