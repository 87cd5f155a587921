"""Settings for localai-admin, every knob read from the environment (README, "Configuration")."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from datetime import timedelta
from pathlib import Path

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

# Lets classes say which model they serve (``admin.ModelAdmin[Job]``) for mypy; Django's
# own classes are not subscriptable at run time.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: str) -> bool:
    value = os.getenv(name, default)
    if value not in ("True", "False"):
        raise ImproperlyConfigured(f"{name} must be True or False, got {value!r}")
    return value == "True"


def envint(name: str, default: str) -> int:
    value = os.getenv(name, default)
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} must be a whole number, got {value!r}"
        ) from None


def envsecret(name: str) -> str | None:
    """Read NAME, or the contents of the file named by NAME_FILE (Docker/Kubernetes secrets)."""
    if path := os.getenv(f"{name}_FILE"):
        return Path(path).read_text().strip()
    return os.getenv(name)


DEBUG = envbool("DEBUG", "True")
DATA_DIR = Path(os.getenv("LOCALAI_ADMIN_DATA_DIR", str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = envsecret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY (or SECRET_KEY_FILE) must be set when DEBUG is False"
        )
    # Development only: a per-checkout key kept in the data dir so sessions survive restarts.
    key_file = DATA_DIR / "dev-secret-key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
    SECRET_KEY = key_file.read_text().strip()

ALLOWED_HOSTS = [h for h in os.getenv("ALLOWED_HOSTS", "").split(",") if h]
if not ALLOWED_HOSTS:
    if not DEBUG:
        raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is False")
    ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]
CSRF_TRUSTED_ORIGINS = [
    o for o in os.getenv("CSRF_TRUSTED_ORIGINS", "").split(",") if o
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "huey.contrib.djhuey",
    "axes",
    "backends",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # The audit log's "who, from where" for every change a view makes.
    "backends.services.audit.RequestActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # JSON errors under /api and /backends whatever DEBUG says.
    "backends.api.middleware.JsonErrorsMiddleware",
    # Last, as django-axes asks: it turns a refused login into the lockout answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "localai_admin.urls"
WSGI_APPLICATION = "localai_admin.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.csp",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.getenv("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}"),
        # Persistent connections: opening one costs more than a status request itself
        # (docs/performance.md). runserver still closes them after each request.
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", "60"),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the Huey consumer write the same file: wait for locks instead of
    # failing, and let readers run beside the writer (WAL). Reads through a memory map
    # (address space, not memory: the pages are the OS cache's): a 100,000-entry
    # catalogue reads tens of thousands of rows per search, and copying each page
    # through SQLite's 2 MB cache doubled its time (docs/performance.md, "At scale").
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": (
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
            "PRAGMA mmap_size=1073741824;"
        ),
    }
    # A file, not memory, for the test database too: tests with several threads or a
    # second process need what production has (file locks that wait, WAL readers).
    # One file per test process, so parallel runs never share it.
    DATABASES["default"]["TEST"] = {
        "NAME": str(
            Path(tempfile.gettempdir()) / f"localai-admin-test-{os.getpid()}.sqlite3"
        )
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "backends:catalogue"
LOGOUT_REDIRECT_URL = "login"

# Login throttling (django-axes), on the dashboard's and the admin's login forms alike:
# after LOCALAI_ADMIN_LOGIN_FAILURES failed logins for one username, or from one client
# address, that username or address is refused (even with the right password) for
# LOCALAI_ADMIN_LOCKOUT_MINUTES, or until an admin resets it (`manage.py axes_reset`,
# or deleting the access attempts in the admin).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = envint("LOCALAI_ADMIN_LOGIN_FAILURES", "5")
AXES_COOLOFF_TIME = timedelta(minutes=envint("LOCALAI_ADMIN_LOCKOUT_MINUTES", "15"))
# Either one locks: a username tried from many addresses, or an address trying many names.
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_LOCKOUT_CALLABLE = "backends.accounts.locked_out"
AXES_CLIENT_IP_CALLABLE = "backends.accounts.client_ip"
AXES_RESET_ON_SUCCESS = True
# Behind a reverse proxy every request comes from the proxy's address: trust the last
# X-Forwarded-For entry (the one the proxy appended) only when told the proxy sets it.
LOCALAI_ADMIN_TRUST_X_FORWARDED_FOR = envbool(
    "LOCALAI_ADMIN_TRUST_X_FORWARDED_FOR", "False"
)
# Under /api and /backends a refused CSRF check answers in the API's JSON envelope.
CSRF_FAILURE_VIEW = "backends.api.http.csrf_failure"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# Security headers. The dashboard loads only its own static files: no inline script or style.
SECURE_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    # Icons are cached and served by us: no image comes from elsewhere.
    "img-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "frame-ancestors": ["'none'"],
    "form-action": ["'self'"],
    "base-uri": ["'self'"],
}
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True

# HTTPS and the proxy in front (docs/deployment.md). X-Forwarded-Proto is whatever the
# client sends unless a proxy that overwrites it is the only way in, so it is trusted only
# when the deployment says so (make serve does, for the nginx of deploy/).
LOCALAI_ADMIN_BEHIND_PROXY = envbool("LOCALAI_ADMIN_BEHIND_PROXY", "False")
if LOCALAI_ADMIN_BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if not DEBUG:
    # False only for plain HTTP on a trusted network: browsers drop secure cookies there.
    LOCALAI_ADMIN_HTTPS = envbool("LOCALAI_ADMIN_HTTPS", "True")
    # Without a proxy one gunicorn port speaks one scheme, so a redirect to https on
    # that same port could never answer: redirect only where a proxy can tell plain HTTP.
    SECURE_SSL_REDIRECT = envbool(
        "SECURE_SSL_REDIRECT", str(LOCALAI_ADMIN_HTTPS and LOCALAI_ADMIN_BEHIND_PROXY)
    )
    SECURE_HSTS_SECONDS = envint(
        "SECURE_HSTS_SECONDS", "31536000" if LOCALAI_ADMIN_HTTPS else "0"
    )
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", "True")
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", "True")
    SESSION_COOKIE_SECURE = LOCALAI_ADMIN_HTTPS
    CSRF_COOKIE_SECURE = LOCALAI_ADMIN_HTTPS

# Huey: SQLite storage in the data dir by default, Redis for scale-out.
HUEY_REDIS_URL = os.getenv("HUEY_REDIS_URL", "")
HUEY = {
    "name": os.getenv("HUEY_NAME", "localai-admin"),
    "immediate": envbool("HUEY_IMMEDIATE", "False"),
    "utc": True,
    "consumer": {"workers": envint("HUEY_WORKERS", "2"), "worker_type": "thread"},
}
if HUEY_REDIS_URL:
    HUEY |= {"huey_class": "huey.PriorityRedisHuey", "url": HUEY_REDIS_URL}
else:
    HUEY |= {
        "huey_class": "huey.SqliteHuey",
        "filename": str(DATA_DIR / "huey.sqlite3"),
    }
# Installs have a queue and threads of their own (docs/workers.md): an install stalled on a
# slow source never holds up a gallery sync, an upgrade check or the offline sweep, which
# stay on the queue above. Four threads, because installs wait on the network far more than
# they use the CPU: two stalled ones leave two for fresh work.
LOCALAI_ADMIN_INSTALL_WORKERS = envint("LOCALAI_ADMIN_INSTALL_WORKERS", "4")
if LOCALAI_ADMIN_INSTALL_WORKERS < 1:
    raise ImproperlyConfigured("LOCALAI_ADMIN_INSTALL_WORKERS must be 1 or more")
HUEY_INSTALLS = HUEY | {
    "name": f"{HUEY['name']}-installs",
    "consumer": {
        "workers": LOCALAI_ADMIN_INSTALL_WORKERS,
        "worker_type": "thread",
        "periodic": False,
    },
}
if not HUEY_REDIS_URL:
    HUEY_INSTALLS["filename"] = str(DATA_DIR / "huey-installs.sqlite3")

# The product itself.
LOCALAI_BACKENDS_PATH = Path(
    os.getenv("LOCALAI_BACKENDS_PATH", str(DATA_DIR / "backends"))
).resolve()
LOCALAI_BACKENDS_SYSTEM_PATH = (
    Path(os.environ["LOCALAI_BACKENDS_SYSTEM_PATH"]).resolve()
    if os.getenv("LOCALAI_BACKENDS_SYSTEM_PATH")
    else None
)
# LocalAI's models folder: its model configs say which backends are in use, and a
# delete of one of those is refused unless forced. Unset: no such check.
LOCALAI_MODELS_PATH = (
    Path(os.environ["LOCALAI_MODELS_PATH"]).resolve()
    if os.getenv("LOCALAI_MODELS_PATH")
    else None
)
DEFAULT_BACKEND_GALLERIES = [
    {
        "name": "localai",
        "url": "https://index.localai.io/backends",
        "mirrors": ["github:mudler/LocalAI/backend/index.yaml@master"],
    }
]
try:
    LOCALAI_BACKEND_GALLERIES = json.loads(
        os.getenv("LOCALAI_BACKEND_GALLERIES") or json.dumps(DEFAULT_BACKEND_GALLERIES)
    )
except json.JSONDecodeError as exc:
    raise ImproperlyConfigured(
        f"LOCALAI_BACKEND_GALLERIES is not valid JSON: {exc}"
    ) from None
LOCALAI_FORCE_META_BACKEND_CAPABILITY = os.getenv(
    "LOCALAI_FORCE_META_BACKEND_CAPABILITY", ""
)
LOCALAI_ADMIN_PROBE_ROOT = Path(os.getenv("LOCALAI_ADMIN_PROBE_ROOT", "/"))
# LocalAI's image tags: a missing released image (latest-X) falls back to its development
# image (master-X, then master-X-development); preferring development installs that first.
LOCALAI_PREFER_DEV_BACKENDS = envbool("LOCALAI_PREFER_DEV_BACKENDS", "False")
# Refuse tarballs without a sha256 and images from galleries without a verification
# policy (off: they install, images with a warning in the job's message).
LOCALAI_ADMIN_REQUIRE_INTEGRITY = envbool("LOCALAI_ADMIN_REQUIRE_INTEGRITY", "False")
# The Sigstore trusted_root.json (Fulcio, CT log, Rekor keys) keyless gallery policies
# are verified against; empty: the public-good root sigstore-python ships.
LOCALAI_ADMIN_SIGSTORE_TRUST_ROOT = os.getenv("LOCALAI_ADMIN_SIGSTORE_TRUST_ROOT", "")
LOCALAI_BACKEND_IMAGES_RELEASE_TAG = (
    os.getenv("LOCALAI_BACKEND_IMAGES_RELEASE_TAG") or "latest"
)
LOCALAI_BACKEND_IMAGES_BRANCH_TAG = (
    os.getenv("LOCALAI_BACKEND_IMAGES_BRANCH_TAG") or "master"
)
LOCALAI_BACKEND_DEV_SUFFIX = os.getenv("LOCALAI_BACKEND_DEV_SUFFIX") or "development"
LOCALAI_ADMIN_CACHE_DIR = DATA_DIR / "cache"
# Gallery icons are fetched by the worker after each sync into LOCALAI_ADMIN_CACHE_DIR
# and served by us (never hot-linked); False shows the placeholder for every backend.
LOCALAI_ADMIN_GALLERY_ICONS = envbool("LOCALAI_ADMIN_GALLERY_ICONS", "True")
GALLERY_SYNC_MINUTES = envint("LOCALAI_ADMIN_GALLERY_SYNC_MINUTES", "60")
# More entries than this fail a gallery's sync (its last good entries stay); the other
# gallery limits are fixed in backends.core.gallery.GalleryLimits.
LOCALAI_ADMIN_GALLERY_MAX_ENTRIES = envint("LOCALAI_ADMIN_GALLERY_MAX_ENTRIES", "20000")
NODE_NAME = os.getenv("LOCALAI_ADMIN_NODE_NAME", "local")
# Registries reached over plain HTTP (loopback hosts always are), comma-separated host:port.
LOCALAI_ADMIN_INSECURE_REGISTRIES = [
    h for h in os.getenv("LOCALAI_ADMIN_INSECURE_REGISTRIES", "").split(",") if h
]
# Basic-auth credentials per registry host: {"host": {"username": "...", "password":
# "...", "realms": ["auth.example.com"]}}. They go to that host only, and to its token
# service when that is on the same host or is an https host listed in "realms".
try:
    LOCALAI_ADMIN_REGISTRY_CREDENTIALS = json.loads(
        envsecret("LOCALAI_ADMIN_REGISTRY_CREDENTIALS") or "{}"
    )
except json.JSONDecodeError as exc:
    raise ImproperlyConfigured(
        f"LOCALAI_ADMIN_REGISTRY_CREDENTIALS is not valid JSON: {exc}"
    ) from None
if not isinstance(LOCALAI_ADMIN_REGISTRY_CREDENTIALS, dict) or not all(
    isinstance(value, dict)
    and isinstance(value.get("username"), str)
    and isinstance(value.get("password"), str)
    and isinstance(value.get("realms", []), list)
    and all(isinstance(realm, str) for realm in value.get("realms", []))
    for value in LOCALAI_ADMIN_REGISTRY_CREDENTIALS.values()
):
    raise ImproperlyConfigured(
        "LOCALAI_ADMIN_REGISTRY_CREDENTIALS must map each registry host to "
        '{"username": "...", "password": "...", "realms": ["https host", ...]}'
    )
# Pull-through mirrors per registry host: {"ghcr.io": "http://mirror:5000"}. Every pull
# from that host asks the mirror first and the registry itself when the mirror fails
# (docs/mirror.md); the mirror's address is under the source policy like any other.
try:
    LOCALAI_ADMIN_REGISTRY_MIRRORS = json.loads(
        os.getenv("LOCALAI_ADMIN_REGISTRY_MIRRORS") or "{}"
    )
except json.JSONDecodeError as exc:
    raise ImproperlyConfigured(
        f"LOCALAI_ADMIN_REGISTRY_MIRRORS is not valid JSON: {exc}"
    ) from None
if not isinstance(LOCALAI_ADMIN_REGISTRY_MIRRORS, dict) or not all(
    isinstance(url, str) and url.startswith(("http://", "https://"))
    for url in LOCALAI_ADMIN_REGISTRY_MIRRORS.values()
):
    raise ImproperlyConfigured(
        "LOCALAI_ADMIN_REGISTRY_MIRRORS must map each registry host to a mirror's "
        'http(s) URL: {"ghcr.io": "http://mirror:5000"}'
    )
# The source policy (backends/core/policy.py). Loopback, private, link-local and other
# non-public addresses are reached only when listed here (comma-separated hosts,
# host:port or CIDRs), after DNS resolution and on every redirect and token realm.
LOCALAI_ADMIN_PRIVATE_HOSTS = [
    h.strip()
    for h in os.getenv("LOCALAI_ADMIN_PRIVATE_HOSTS", "").split(",")
    if h.strip()
]
# file:// URLs and local paths are read only under these folders (comma-separated).
LOCALAI_ADMIN_LOCAL_ROOTS = [
    Path(p.strip())
    for p in os.getenv("LOCALAI_ADMIN_LOCAL_ROOTS", str(DATA_DIR / "imports")).split(
        ","
    )
    if p.strip()
]
UPGRADE_CHECK_HOURS = envint("LOCALAI_ADMIN_UPGRADE_CHECK_HOURS", "6")
# Bounds on one install (backends/core/limits.py): the bytes it may write (200 GiB), and
# the free space it must leave on the backends disk (1 GiB), which also holds the
# database and usually the models.
LOCALAI_ADMIN_MAX_BACKEND_BYTES = envint(
    "LOCALAI_ADMIN_MAX_BACKEND_BYTES", str(200 * 1024**3)
)
# The largest offline kit an import extracts (backends/core/kits.py); kits are extracted
# under the first of LOCALAI_ADMIN_LOCAL_ROOTS, in kits/.
LOCALAI_ADMIN_MAX_KIT_BYTES = envint("LOCALAI_ADMIN_MAX_KIT_BYTES", str(200 * 1024**3))
LOCALAI_ADMIN_DISK_RESERVE_BYTES = envint(
    "LOCALAI_ADMIN_DISK_RESERVE_BYTES", str(1024**3)
)
# How many replaced builds of each backend an upgrade or a reinstall keeps for a
# rollback (backends/core/versions.py), in <backends>/.versions where LocalAI does not
# look; 0 keeps none.
LOCALAI_ADMIN_KEEP_VERSIONS = envint("LOCALAI_ADMIN_KEEP_VERSIONS", "1")
# Deadlines on every transfer (backends/core/transfer.py): a download, registry or
# gallery request that makes less than 1 KiB of progress in this many seconds fails
# that attempt; a source that stalls twice fails the job (or the sync).
LOCALAI_ADMIN_STALL_SECONDS = envint("LOCALAI_ADMIN_STALL_SECONDS", "60")
# Before the swap a new build is started (run.sh --addr ...) and must answer LocalAI's
# gRPC Health call within this many seconds (backends/core/health.py); "off" skips it.
_health_check = os.getenv("LOCALAI_ADMIN_HEALTH_CHECK", "on")
if _health_check not in ("on", "off"):
    raise ImproperlyConfigured(
        f"LOCALAI_ADMIN_HEALTH_CHECK must be on or off, got {_health_check!r}"
    )
LOCALAI_ADMIN_HEALTH_CHECK = _health_check == "on"
LOCALAI_ADMIN_HEALTH_TIMEOUT_SECONDS = envint(
    "LOCALAI_ADMIN_HEALTH_TIMEOUT_SECONDS", "60"
)
if LOCALAI_ADMIN_HEALTH_TIMEOUT_SECONDS < 1:
    raise ImproperlyConfigured(
        "LOCALAI_ADMIN_HEALTH_TIMEOUT_SECONDS must be at least 1"
    )

# Distributed mode: agents on several hosts share PostgreSQL and a Redis queue per node.
DISTRIBUTED = bool(HUEY_REDIS_URL) and DATABASES["default"]["ENGINE"].endswith(
    "postgresql"
)
# The shared secret agents present to register and heartbeat (README, "Scale-out").
LOCALAI_ADMIN_REGISTRATION_TOKEN = envsecret("LOCALAI_ADMIN_REGISTRATION_TOKEN") or ""
LOCALAI_ADMIN_ALLOW_EMPTY_TOKEN = envbool("LOCALAI_ADMIN_ALLOW_EMPTY_TOKEN", "False")
NODE_HEARTBEAT_SECONDS = envint("LOCALAI_ADMIN_HEARTBEAT_SECONDS", "5")
NODE_OFFLINE_SECONDS = envint("LOCALAI_ADMIN_NODE_OFFLINE_SECONDS", "30")

# The audit log keeps this many days of events (0: forever); pruned daily by the worker.
LOCALAI_ADMIN_AUDIT_RETENTION_DAYS = envint("LOCALAI_ADMIN_AUDIT_RETENTION_DAYS", "365")
# GET /metrics answers a bearer token equal to this one, an API token whose user may
# view, or an address in these comma-separated CIDRs; anyone else gets 401/403.
LOCALAI_ADMIN_METRICS_TOKEN = envsecret("LOCALAI_ADMIN_METRICS_TOKEN") or ""
LOCALAI_ADMIN_METRICS_ALLOW = [
    c.strip()
    for c in os.getenv("LOCALAI_ADMIN_METRICS_ALLOW", "").split(",")
    if c.strip()
]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Every URL in a log line is redacted (backends/core/redact.py), whoever logs it.
    "filters": {"redact": {"()": "backends.core.redact.RedactingFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["redact"]}},
    "root": {"handlers": ["console"], "level": os.getenv("LOG_LEVEL", "INFO")},
    "loggers": {
        # httpx logs every request's full URL (tokens in queries included) at INFO.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # The Huey consumer adds its own handler unless the logger has one already.
        "huey": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}

# In development whitenoise serves straight from the source folders (no collectstatic).
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
