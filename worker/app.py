"""The one module-level Celery app, for `celery -A worker.app worker ...` and `batchscribe worker`.

Settings come from the environment (BATCHSCRIBE_REDIS_URL, …); everything else builds its own app
from `common.celery_app.make_app`.
"""

from common.celery_app import make_app
from common.settings import Settings
from worker.tasks import register

settings = Settings.from_env()
app = make_app(settings)
runtime = register(app, settings)
