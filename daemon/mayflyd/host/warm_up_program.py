"""A tenant program that the zygote loads (and then forgets) before it forks
any host, so that the loading code every host runs next is already warm."""


def on_init() -> None:
    pass


def on_client_request() -> str:
    return "warm"
