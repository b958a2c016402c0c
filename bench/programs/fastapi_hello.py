"""Hello world in FastAPI (ASGI), for the benchmark's apps step: served by
uvicorn (one worker) and by mayflyd as `app: "fastapi_hello:app"`."""
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
async def hello() -> str:
    return "Hello, World!"
