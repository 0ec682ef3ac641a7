"""The one module-level Celery app: `celery -A batchscribe.worker.app worker ...`, `batchscribe worker`.

Settings come from the environment (BATCHSCRIBE_REDIS_URL, …); everything else builds its own app
from `common.celery_app.make_app`.
"""

from batchscribe.common.celery_app import make_app
from batchscribe.common.settings import Settings
from batchscribe.worker.tasks import register

settings = Settings.from_env()
app = make_app(settings)
runtime = register(app, settings)
