"""Hello world in Flask (WSGI), for the benchmark's apps step: served by
gunicorn (one sync worker) and by mayflyd as `app: "flask_hello:app"`."""
from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello() -> str:
    return "Hello, World!"
