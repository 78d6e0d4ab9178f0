"""The HTTP inference service over the engine (`edgecaffe serve`; the `serve` extra: Starlette,
uvicorn, prometheus-client, python-multipart). `import edgecaffe` never loads this package.

    from edgecaffe.serve import ServeConfig, Service, create_app
    service = Service(ServeConfig("models/", budget="512M", mode="masa"))
    app = create_app(service)           # any ASGI server; `edgecaffe serve` runs uvicorn

Modules: `repository` (the folder's models, built once), `inputs` (what a call asks for),
`admission` (the bounded queue, deadlines, disconnects), `calls` (one inference call),
`results` (engine results as JSON), `metrics` (Prometheus), `status` (models and the live
page's figures), `service` (the engine's life cycle), `app` (routes), `page.html`.
"""

from edgecaffe.serve.app import create_app
from edgecaffe.serve.service import ServeConfig, Service

__all__ = ["ServeConfig", "Service", "create_app"]
