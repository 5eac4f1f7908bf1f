"""The web UI: `python app.py` (same as `restore ui`), then open http://127.0.0.1:7860.

Options come from `restore ui --help` (host, port, backend, threads); Gradio's
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT environment variables are honoured too.
The app is built in restore/ui.py; this file only launches it.
"""
import os
import sys

from restore.cli import main

if __name__ == "__main__":
    argv = ["ui", *sys.argv[1:]]
    if "--host" not in argv and os.environ.get("GRADIO_SERVER_NAME"):
        argv += ["--host", os.environ["GRADIO_SERVER_NAME"]]
    if "--port" not in argv and os.environ.get("GRADIO_SERVER_PORT"):
        argv += ["--port", os.environ["GRADIO_SERVER_PORT"]]
    sys.exit(main(argv))
