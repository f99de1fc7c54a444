"""Open an Optuna storage, or say in one line why it cannot be opened.

A study that cannot reach its storage must fail before any trial runs: a measurement whose
result cannot be recorded is GPU time thrown away.
"""

from __future__ import annotations

from pathlib import Path

from optuna.storages import BaseStorage, RDBStorage

__all__ = ["StorageError", "default_storage_url", "open_storage"]

STUDY_DB = "study.db"
# The PyPI packages behind the drivers SQLAlchemy imports for the usual URLs.
_DRIVER_PACKAGES = {
    "psycopg": "'jouletune[postgres]' or 'psycopg[binary]'",  # SQLAlchemy 2.1's default
    "psycopg2": "psycopg2-binary",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
}


class StorageError(RuntimeError):
    """The storage URL is malformed, its driver is missing, or its database is unreachable."""


def default_storage_url(out_dir: Path) -> str:
    """SQLite in the out folder; `optuna-dashboard` opens the same URL."""
    return f"sqlite:///{(out_dir / STUDY_DB).resolve()}"


def open_storage(url: str) -> BaseStorage:
    """An RDB storage for `url` (any SQLAlchemy URL Optuna accepts), connected and migrated.

    Raises:
        StorageError: one line naming the URL (password hidden) and the reason.
    """
    shown = _hide_password(url)
    missing = _missing_driver(url)
    if missing is not None:
        hint = _DRIVER_PACKAGES.get(missing, missing)
        raise StorageError(f"storage {shown}: driver {missing} not installed (pip install {hint})")
    try:
        return RDBStorage(url, skip_table_creation=False)
    except ModuleNotFoundError as err:
        raise StorageError(f"storage {shown}: driver not installed ({err.name})") from None
    except Exception as err:  # SQLAlchemy raises many types; all mean "cannot use this URL"
        raise StorageError(f"storage {shown}: {_first_line(err)}") from None


def _missing_driver(url: str) -> str | None:
    """The module SQLAlchemy needs for `url` when it is not installed, else None."""
    try:
        from sqlalchemy.engine import make_url

        make_url(url).get_dialect().import_dbapi()
    except ModuleNotFoundError as err:
        return err.name or "for this URL"
    except Exception:  # a bad URL or dialect: RDBStorage says so in its own words
        return None
    return None


def _first_line(err: BaseException) -> str:
    # SQLAlchemy appends a background link after the driver's own message.
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _hide_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL: show it as given, it holds no usable secret
        return url
