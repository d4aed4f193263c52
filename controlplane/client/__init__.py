"""``controlplane.client``: how every ccmkit component talks to a Kubernetes API server (ccmkit's or a real one).

REST verbs over pooled HTTP/1.1 (``ApiClient``), streaming watches, informers with a shared factory, and client-go's
work queues. Objects are plain dicts in the Kubernetes wire format; failures are ``ApiError`` subclasses.
"""

from .clock import Clock, FakeClock, RealClock
from .config import (
    ClientConfig,
    KubeconfigError,
    from_url,
    load_kubeconfig,
    parse_kubeconfig,
)
from .errors import (
    AlreadyExists,
    ApiError,
    BadRequest,
    Conflict,
    Expired,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    ServerError,
    TooManyRequests,
    Unauthorized,
    error_from_response,
    error_from_status,
)
from .informers import (
    Backoff,
    Informer,
    SharedInformerFactory,
    meta_namespace_key,
    namespace_index,
    split_key,
)
from .protocol import ApiRequest, PatchType
from .resources import *  # noqa: F403 - the resource constants are the vocabulary of every call
from .resources import BUILTIN_RESOURCES, Resource, resource_for, resource_of
from .rest import ApiClient, component_user_agent
from .watch import (
    ResumableWatcher,
    Watch,
    WatchDecoder,
    WatchEvent,
    WatchProtocolError,
    watch,
)
from .workqueue import (
    BucketRateLimiter,
    DelayingQueue,
    ItemExponentialFailureRateLimiter,
    ItemFastSlowRateLimiter,
    MaxOfRateLimiter,
    RateLimiter,
    RateLimitingQueue,
    WorkQueue,
    default_controller_rate_limiter,
)
