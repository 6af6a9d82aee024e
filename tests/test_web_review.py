"""What reviewers see in the web app beyond the happy path: a missing page is a page (the API stays JSON), a
form sent after the session ended leads back through the login page, messages never carry server paths
or text from the address, captions date a photo by when the animal was seen, and a merge is undone from
the dashboard (the same pages in a real browser: test_web_browser.py)."""

import html
import io
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from webapp import PASSWORD, build_catalog, client
from whaleid.errors import UserError
from whaleid.web.config import WebConfig
from whaleid.web.security import COOKIE
from whaleid.web.users import log_out

NO_WORKER = WebConfig(start_worker=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory, synth_csv, model):
    """One catalog for the module: each test decides on its own photos and individuals."""
    return build_catalog(tmp_path_factory.mktemp("review"), synth_csv, model)


@pytest.fixture(scope="module")
def individuals(store) -> list[str]:
    return [i["individual"] for i in client(store, "viewer", NO_WORKER).get("/api/individuals").json()]


def form_client(store, role: str):
    """A logged-in client that posts forms as a browser does: the CSRF token in the form, not a header."""
    c = client(store, role, NO_WORKER)
    return c, c.headers.pop("X-CSRF-Token")


def shown(page) -> str:
    return html.unescape(page.text)


def test_a_missing_photo_individual_or_page_is_a_404_page_while_the_api_answers_json(store):
    c = client(store, "viewer", NO_WORKER)
    for path, says in (
        ("/review/99999", "No photo 99999"),
        ("/individuals/NOPE", "No individual 'NOPE'"),
        ("/encounters/99999", "No encounter 99999"),
        ("/no/such/page", "Not Found"),
    ):
        page = c.get(path)
        assert page.status_code == 404, path
        assert page.headers["content-type"].startswith("text/html"), f"{path}: {page.text[:200]}"
        assert says in shown(page) and 'href="/review"' in page.text, path  # the site's page, with its menu
    api = c.get("/api/photos/99999")
    assert api.status_code == 404 and api.json() == {"detail": "no photo 99999"}
    assert c.get("/api/individuals/NOPE").json() == {"detail": "no individual 'NOPE'"}


def test_a_form_sent_after_the_session_ended_leads_to_the_login_page_and_back(store, individuals):
    c, token = form_client(store, "reviewer")
    source, into = individuals[1], individuals[2]
    page = f"/individuals/{source}"
    log_out(store, c.cookies.get(COOKIE))  # the session ends (expired, or logged out in another tab)
    sent = c.post(
        f"{page}/merge",
        data={"into": into, "csrf": token},
        headers={"Referer": f"http://testserver{page}"},
        follow_redirects=False,
    )
    assert sent.status_code == 303, sent.text
    location = urlsplit(sent.headers["location"])
    assert location.path == "/login" and parse_qs(location.query)["next"] == [page]
    login = c.get(sent.headers["location"])
    assert login.status_code == 200 and login.headers["content-type"].startswith("text/html")
    assert "Your session has ended" in login.text and f'name="next" value="{page}"' in login.text
    assert client(store, "viewer", NO_WORKER).get(f"/api/individuals/{source}").json()["individual"] == source

    api = c.post(f"/api/individuals/{source}/merge", json={"into": into}, headers={"X-CSRF-Token": token})
    assert api.status_code == 401 and api.json() == {"detail": "log in first"}

    csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
    again = c.post(
        "/login", data={"name": "reviewer", "password": PASSWORD, "csrf": csrf, "next": page}, follow_redirects=False
    )
    assert again.status_code == 303 and again.headers["location"] == page  # back where the form was


def test_web_errors_never_show_the_catalogs_folder(store):
    c = client(store, "reviewer", NO_WORKER)
    answer = c.post("/api/photos/99999/decision", json={"kind": "unsure"})
    assert answer.status_code == 404
    assert answer.json() == {"detail": "no photo 99999 in the catalog"}
    assert str(store.dir.resolve()) not in answer.text and str(store.dir) not in answer.text


def test_a_failed_jobs_error_never_shows_the_catalogs_folder(store, monkeypatch):
    c = client(store, "reviewer", NO_WORKER)
    job = c.post("/api/uploads", json={"place": "path bay"}).json()["id"]
    photo = io.BytesIO()
    Image.new("RGB", (40, 40), (9, 99, 199)).save(photo, format="JPEG")
    assert c.post(f"/api/uploads/{job}/photos", files={"file": ("a.jpg", photo.getvalue())}).status_code == 201
    assert c.post(f"/api/uploads/{job}/start").status_code == 200

    def fails(*args, **kwargs):
        raise UserError(f"{store.dir.resolve() / 'photos' / 'x.jpg'} could not be read")

    monkeypatch.setattr(store.intake, "add", fails)
    assert c.app.state.jobs.run_next()
    failed = c.get(f"/api/jobs/{job}").json()
    assert failed["state"] == "failed" and failed["error"] == "the catalog/photos/x.jpg could not be read"
    assert str(store.dir) not in c.get("/").text


def test_banners_show_only_the_servers_own_messages(store, individuals):
    anonymous = client(store, config=NO_WORKER)
    phishing = "Your account is locked: call +1 555 0100 to unlock it"
    page = anonymous.get("/login", params={"error": phishing, "note": phishing})
    assert page.status_code == 200 and "555 0100" not in page.text and 'class="flash' not in page.text
    assert "The login form expired: try again." in anonymous.get("/login", params={"error": "login-expired"}).text

    c, token = form_client(store, "reviewer")
    refused = c.post(f"/individuals/{individuals[0]}/merge", data={"into": phishing, "csrf": token})
    assert refused.status_code == 200 and refused.url.path == f"/individuals/{individuals[0]}"
    assert "Not merged" in shown(refused) and "555 0100" not in refused.text


def test_captions_date_a_photo_by_when_the_animal_was_seen_never_by_its_import(store, individuals):
    c = client(store, "reviewer", NO_WORKER)
    target = individuals[0]
    pending = c.get("/api/queue").json()[0]["photo"]
    decided = c.post(f"/api/photos/{pending}/decision", json={"kind": "confirm", "individual": target})
    assert decided.status_code == 200, decided.text
    imported = c.get(f"/api/individuals/{target}").json()["photos"]
    added = {p["added_at"][:10] for p in imported}

    captions = re.findall(r"<figcaption>(.*?)</figcaption>", c.get(f"/individuals/{target}").text)
    assert len(captions) == len(imported) >= 2
    assert "2026-07-01" in captions  # the photo of the survey: its encounter's date
    assert captions.count("date unknown") == len(imported) - 1  # catalog photos without EXIF or encounter
    assert not added & set(captions)

    other = c.get("/api/queue").json()[0]["photo"]
    review = c.get(f"/review/{other}").text
    thumbs = re.findall(r'<li class="candidate".*?</li>', review, flags=re.S)
    captions = [re.sub(r"<.*?>", "", t) for li in thumbs for t in re.findall(r"<figcaption>(.*?)</figcaption>", li)]
    assert captions and all(not any(day in caption for day in added) for caption in captions), captions


def test_a_merge_is_undone_from_the_dashboards_decisions(store, individuals):
    """The individual page promises it; the dashboard's Undo is a form (CSRF, reviewer role) over the
    same CatalogStore.review.undo as `whaleid catalog undo`."""
    c, token = form_client(store, "reviewer")
    viewer, viewer_token = form_client(store, "viewer")
    source, into = individuals[3], individuals[4]
    merged = c.post(f"/individuals/{source}/merge", data={"into": into, "csrf": token}, follow_redirects=False)
    assert merged.status_code == 303 and "error" not in merged.headers["location"]
    assert c.get(f"/api/individuals/{source}").json()["individual"] == into
    decision = c.get("/api/decisions").json()[0]
    assert decision["kind"] == "merge" and decision["individual"] == source
    undo = f'action="/decisions/{decision["id"]}/undo"'
    assert undo in c.get("/").text and undo not in viewer.get("/").text

    for who, form in ((c, {}), (viewer, {"csrf": viewer_token})):
        refused = who.post(f"/decisions/{decision['id']}/undo", data=form)
        assert refused.status_code == 403 and refused.headers["content-type"].startswith("text/html")
    assert c.get(f"/api/individuals/{source}").json()["individual"] == into  # still merged

    done = c.post(f"/decisions/{decision['id']}/undo", data={"csrf": token}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/?note=undone"
    assert c.get(f"/api/individuals/{source}").json()["individual"] == source  # two individuals again
    dashboard = c.get(done.headers["location"])
    assert "Decision undone." in dashboard.text and undo not in dashboard.text
    again = c.post(f"/decisions/{decision['id']}/undo", data={"csrf": token})
    assert again.status_code == 200 and "Not undone" in again.text
