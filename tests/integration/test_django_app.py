"""A minimal Django project (tenant key `app: "mysite.wsgi:application"`)
through the daemon, under both engines: a view renders a template from rows
of a bundled SQLite file, opened read-only as the sandbox's root is, and no
request's state reaches the next.
"""
from __future__ import annotations

import json
import sqlite3
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import Daemon, skip_without_reset_engine
from tests.integration.conftest import limits, needs_root, serving

pytestmark = needs_root

HOST = "django.localhost"
OTHER_HOST = "not-allowed.localhost"  # a host of the tenant, not in ALLOWED_HOSTS

# The project, a package next to the config: that directory is what the
# sandbox sees, templates and database included.
PROJECT = {
    "__init__.py": "",
    "wsgi.py": '''
        import os

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

        from django.core.wsgi import get_wsgi_application

        application = get_wsgi_application()
    ''',
    "settings.py": '''
        from pathlib import Path

        BASE_DIR = Path(__file__).resolve().parent
        SECRET_KEY = "only-for-this-test"
        DEBUG = False
        ALLOWED_HOSTS = ["django.localhost"]
        INSTALLED_APPS = ["mysite.shop"]
        MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
        ROOT_URLCONF = "mysite.urls"
        TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
        # The sandbox's root is read-only. A plain path works too (SQLite
        # falls back to reading), but mode=ro says so and immutable=1 skips
        # locking: nobody changes the file.
        DATABASES = {"default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": f"file:{BASE_DIR / 'shop.sqlite'}?mode=ro&immutable=1",
            "OPTIONS": {"uri": True},
        }}
        USE_TZ = True
        DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
    ''',
    "urls.py": '''
        from django.urls import path

        from mysite.shop import views

        urlpatterns = [
            path("", views.products),
            path("products/<int:product_id>/", views.product),
            path("state/", views.state),
            path("buy/", views.buy),
        ]
    ''',
    "shop/__init__.py": "",
    "shop/models.py": '''
        from django.db import models


        class Product(models.Model):
            name = models.CharField(max_length=100)
            price_cents = models.IntegerField()

            class Meta:
                db_table = "products"
                managed = False
                app_label = "shop"
    ''',
    "shop/views.py": '''
        from django.http import Http404, JsonResponse
        from django.shortcuts import render

        from mysite.shop.models import Product

        calls = 0
        seen = []


        def _count(request):
            # Module-level state every request changes: the sandbox must throw it away.
            global calls
            calls += 1
            seen.append(request.path)


        def products(request):
            _count(request)
            rows = Product.objects.order_by("price_cents")
            return render(request, "shop/products.html", {"products": rows, "calls": calls})


        def product(request, product_id):
            _count(request)
            try:
                row = Product.objects.get(pk=product_id)
            except Product.DoesNotExist:
                raise Http404("no such product")
            return JsonResponse({"id": row.id, "name": row.name, "price_cents": row.price_cents})


        def state(request):
            _count(request)
            return JsonResponse({"calls": calls, "seen": seen})


        def buy(request):
            from django.db import OperationalError
            try:
                Product.objects.create(name="vase", price_cents=1200)
            except OperationalError as exc:
                return JsonResponse({"refused": str(exc)}, status=409)
            return JsonResponse({"bought": True})
    ''',
    "shop/templates/shop/products.html": '''
        <h1>Products ({{ products|length }}, call {{ calls }})</h1>
        <ul>{% for p in products %}
        <li>{{ p.name }}: {{ p.price_cents }}</li>{% endfor %}
        </ul>
    ''',
}

ROWS = [(1, "lamp", 2500), (2, "chair <oak>", 8900), (3, "mug", 700)]


def write_project(directory: Path) -> None:
    """mysite/ with its shop.sqlite, made here as a deploy would ship it."""
    for name, source in PROJECT.items():
        path = directory / "mysite" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip())
    with sqlite3.connect(directory / "mysite" / "shop.sqlite") as db:
        db.execute("CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL)")
        db.executemany("INSERT INTO products VALUES (?, ?, ?)", ROWS)
    db.close()


@pytest.fixture(scope="module", params=("fork", "reset"))
def daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    engine = str(request.param)
    skip_without_reset_engine(engine)
    workdir = tmp_path_factory.mktemp("mayflyd-django")
    write_project(workdir)
    tenants = [{"name": "django", "hosts": [HOST, OTHER_HOST], "app": "mysite.wsgi:application", "engine": engine,
                "env": {"DJANGO_SETTINGS_MODULE": "mysite.settings"}, "limits": limits()}]
    yield from serving(Daemon(workdir, tenants, {}), engine)


def test_a_template_renders_rows_of_the_bundled_database(daemon: Daemon) -> None:
    for _ in range(4):
        reply = daemon.get(HOST)
        assert reply.status == 200, reply.text
        assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
        text = reply.text
        assert "<h1>Products (3, call 1)</h1>" in text
        # Ordered by price, and autoescaped.
        assert text.index("mug: 700") < text.index("lamp: 2500") < text.index("chair &lt;oak&gt;: 8900")


def test_orm_lookup_json_and_404(daemon: Daemon) -> None:
    reply = daemon.get(HOST, "/products/2/")
    assert reply.status == 200, reply.text
    assert json.loads(reply.body) == {"id": 2, "name": "chair <oak>", "price_cents": 8900}
    assert daemon.get(HOST, "/products/99/").status == 404
    assert daemon.get(HOST, "/nowhere/").status == 404
    # CommonMiddleware's APPEND_SLASH: a redirect to the path with its slash.
    reply = daemon.get(HOST, "/state")
    assert reply.status == 301 and reply.headers["Location"] == "/state/"


def test_a_host_outside_allowed_hosts_is_refused(daemon: Daemon) -> None:
    # The daemon routes both names to the tenant; Django checks ALLOWED_HOSTS itself.
    assert daemon.get(f"{HOST}:8080").status == 200
    assert daemon.get(OTHER_HOST).status == 400


def test_the_database_is_read_only(daemon: Daemon) -> None:
    reply = daemon.get(HOST, "/buy/")
    assert reply.status == 409 and json.loads(reply.body) == {"refused": "attempt to write a readonly database"}
    assert daemon.get(HOST).text.count("<li>") == len(ROWS)


def test_module_state_never_reaches_the_next_request(daemon: Daemon) -> None:
    for _ in range(5):
        reply = daemon.get(HOST, "/state/")
        assert reply.status == 200, reply.text
        assert json.loads(reply.body) == {"calls": 1, "seen": ["/state/"]}
