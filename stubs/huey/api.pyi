# The part of Huey's API this project calls. Huey ships no type information, and an
# untyped decorator would erase the signature of every task under mypy --strict.
import datetime
from collections.abc import Callable
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

from huey.consumer import Consumer
from huey.storage import BaseStorage

_P = ParamSpec("_P")
_R = TypeVar("_R")
_F = TypeVar("_F", bound=Callable[..., Any])

Schedule = Callable[[datetime.datetime], bool]

class Task:
    id: str
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

class PeriodicTask(Task):
    def validate_datetime(self, timestamp: datetime.datetime) -> bool: ...

class Result:
    id: str
    task: Task
    def get(
        self,
        blocking: bool = ...,
        timeout: float | None = ...,
        backoff: float = ...,
        max_delay: float = ...,
        revoke_on_timeout: bool = ...,
        preserve: bool = ...,
    ) -> Any: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def revoke(self, revoke_once: bool = ...) -> None: ...
    def is_revoked(self) -> bool: ...

class TaskWrapper[**P, R]:
    huey: Huey
    name: str
    func: Callable[P, R]
    task_class: type[Task]
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Result: ...
    def call_local(self, *args: P.args, **kwargs: P.kwargs) -> R: ...
    def s(self, *args: Any, **kwargs: Any) -> Task: ...
    def schedule(
        self,
        args: tuple[Any, ...] | None = ...,
        kwargs: dict[str, Any] | None = ...,
        eta: datetime.datetime | None = ...,
        delay: float | datetime.timedelta | None = ...,
        priority: int | None = ...,
        retries: int | None = ...,
        retry_delay: float | None = ...,
        expires: float | datetime.timedelta | None = ...,
        id: str | None = ...,
    ) -> Result: ...
    def revoke(
        self, revoke_until: datetime.datetime | None = ..., revoke_once: bool = ...
    ) -> None: ...
    def is_revoked(self, timestamp: datetime.datetime | None = ...) -> bool: ...

class TaskLock:
    def __call__(self, fn: _F) -> _F: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None: ...
    def is_locked(self) -> bool: ...
    def acquire(self) -> bool: ...
    def clear(self) -> bool: ...

class Huey:
    name: str
    immediate: bool
    storage: BaseStorage
    utc: bool
    def __init__(
        self,
        name: str = ...,
        results: bool = ...,
        store_none: bool = ...,
        utc: bool = ...,
        immediate: bool = ...,
        serializer: Any = ...,
        compression: bool = ...,
        use_zlib: bool = ...,
        immediate_use_memory: bool = ...,
        always_eager: bool | None = ...,
        storage_class: type[BaseStorage] | None = ...,
        **storage_kwargs: Any,
    ) -> None: ...
    def create_consumer(self, **options: Any) -> Consumer: ...
    def notify_interrupted_tasks(self) -> None: ...
    def read_periodic(self, timestamp: datetime.datetime) -> list[Any]: ...
    def task(
        self,
        retries: int = ...,
        retry_delay: float = ...,
        retry_backoff: float = ...,
        priority: int | None = ...,
        context: bool = ...,
        name: str | None = ...,
        expires: float | datetime.timedelta | None = ...,
        timeout: float | None = ...,
        **kwargs: Any,
    ) -> Callable[[Callable[_P, _R]], TaskWrapper[_P, _R]]: ...
    def periodic_task(
        self,
        validate_datetime: Schedule,
        retries: int = ...,
        retry_delay: float = ...,
        retry_backoff: float = ...,
        priority: int | None = ...,
        context: bool = ...,
        name: str | None = ...,
        expires: float | datetime.timedelta | None = ...,
        timeout: float | None = ...,
        **kwargs: Any,
    ) -> Callable[[Callable[_P, _R]], TaskWrapper[_P, _R]]: ...
    def lock_task(self, lock_name: str, ttl: float | None = ...) -> TaskLock: ...
    def on_startup(self, name: str | None = ...) -> Callable[[_F], _F]: ...
    def on_shutdown(self, name: str | None = ...) -> Callable[[_F], _F]: ...
    def pre_execute(self, name: str | None = ...) -> Callable[[_F], _F]: ...
    def post_execute(self, name: str | None = ...) -> Callable[[_F], _F]: ...
    def signal(self, *signals: str) -> Callable[[_F], _F]: ...
    def enqueue(self, task: Task) -> Result | None: ...
    def revoke_by_id(
        self,
        id: str,
        revoke_until: datetime.datetime | None = ...,
        revoke_once: bool = ...,
    ) -> None: ...
    def revoke_all(
        self,
        task_class: type[Task],
        revoke_until: datetime.datetime | None = ...,
        revoke_once: bool = ...,
    ) -> None: ...
    def is_revoked(
        self, task: Task | str, timestamp: datetime.datetime | None = ...
    ) -> bool: ...
    def pending(self, limit: int | None = ...) -> list[Task]: ...
    def pending_count(self) -> int: ...
    def scheduled(self, limit: int | None = ...) -> list[Task]: ...
    def scheduled_count(self) -> int: ...
    def result(
        self, id: str, blocking: bool = ..., timeout: float | None = ...
    ) -> Any: ...
    def flush(self) -> None: ...
    def __len__(self) -> int: ...

class BlackHoleHuey(Huey): ...
class MemoryHuey(Huey): ...
class SqliteHuey(Huey): ...
class RedisHuey(Huey): ...
class RedisExpireHuey(RedisHuey): ...
class PriorityRedisHuey(RedisHuey): ...
class PriorityRedisExpireHuey(RedisHuey): ...
class FileHuey(Huey): ...

def crontab(
    minute: str = ...,
    hour: str = ...,
    day: str = ...,
    month: str = ...,
    day_of_week: str = ...,
    strict: bool = ...,
) -> Schedule: ...
