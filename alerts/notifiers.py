"""Notifiers: deliver a Notification to the console, Slack (bot token or incoming webhook), a JSON webhook
or Alertmanager.

Every failure comes out as DeliveryError; the outbox retries with backoff, so the clients here make
one attempt each (slack-sdk's own retry handlers are off). Secrets (bot tokens, webhook URLs, which
embed a token) never appear in messages or logs: a webhook is named "webhook <receiver name>".

    from alerts.notifiers import build_notifier
    notifier = build_notifier("oncall", config.alerts.receivers["oncall"])
    receipt = notifier.send(notification, parent=None)          # first message of an incident
    notifier.send(follow_up, parent=receipt)                    # Slack: edits the first, replies in thread
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web import SlackResponse
from slack_sdk.webhook import WebhookClient

from alerts import render
from alerts.alertmanager import postable_alerts
from alerts.model import RESOLVED, DeliveryError, Notification, Notifier, Receipt
from monitor.base.config import ReceiverConfig, Secret, SecretSource, SecretUnavailable, window_length

log = logging.getLogger(__name__)
console_log = logging.getLogger("alerts.console")

METADATA_EVENT = "specwatch_notification"
SLACK_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")
SLACK_ERROR_CODE = re.compile(r"^[a-z0-9_]{1,64}$")
PAGE_SIZE = 200
MAX_PAGES = 20
# the parent message may be gone or no longer editable: the thread reply still goes out
UPDATE_SKIPPABLE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})

# slack-sdk logs request URLs (a webhook URL is a secret) at DEBUG, and at ERROR each failure it then
# raises, which comes out of here as DeliveryError for the outbox to report: its own log stays quiet
_sdk_log = logging.getLogger("alerts.slack_sdk")
if _sdk_log.level == logging.NOTSET:
    _sdk_log.setLevel(logging.CRITICAL)


class SlackDeliveryError(DeliveryError):
    """An error answer from the Slack Web API: its HTTP status and Slack error code ("" when it had none)."""

    def __init__(self, message: str, *, status: int, slack_error: str, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.slack_error = slack_error

    @property
    def refused(self) -> bool:
        """Slack answered {"ok": false} (channel_not_found, missing_scope, ...): asking again will not help soon."""
        return self.status == 200


class ConsoleNotifier:
    """Logs each alert of a notification (logger "alerts.console"): WARNING while firing, INFO once resolved."""

    def __init__(self, name: str) -> None:
        self.name = name

    def send(self, notification: Notification, parent: Receipt | None) -> Receipt:
        for alert in notification.alerts:
            level = logging.INFO if alert.status == RESOLVED else logging.WARNING
            console_log.log(level, "[%s] %s", notification.kind, render.log_line(alert))
        return Receipt(detail={"logged": len(notification.alerts)})

    def find_delivered(self, notification: Notification, parent: Receipt | None, since: datetime) -> Receipt | None:
        return None


class SlackNotifier:
    """Slack with a bot token: the first notification of an incident is a channel message; follow-ups
    edit it to show the group's current status, then reply in its thread. Messages carry metadata
    (event_type "specwatch_notification", the notification id) so find_delivered can spot a repeat."""

    def __init__(
        self,
        name: str,
        *,
        channel: str,
        token: Secret,
        api_url: str = "https://slack.com/api/",
        timeout_s: float = 10.0,
    ) -> None:
        self.name = name
        self.channel = channel
        self._channel_id = channel if SLACK_CHANNEL_ID.match(channel) else None
        self._client = WebClient(
            token=token.reveal(),
            base_url=api_url if api_url.endswith("/") else api_url + "/",
            timeout=cast(int, timeout_s),  # annotated int, but urlopen takes a float
            logger=_sdk_log,
            retry_handlers=[],
        )

    def send(self, notification: Notification, parent: Receipt | None) -> Receipt:
        message = {
            "text": render.fallback_text(notification),
            "blocks": render.slack_blocks(notification),
            "metadata": slack_metadata(notification),
        }
        if parent is None or not (parent.channel and parent.ts):
            response = self._call("chat.postMessage", channel=self.channel, **message)
        else:
            self._update_parent(notification, parent)
            response = self._call("chat.postMessage", channel=parent.channel, thread_ts=parent.ts, **message)
        self._channel_id = response.get("channel") or self._channel_id
        return Receipt(channel=response.get("channel"), ts=response.get("ts"))

    def find_delivered(self, notification: Notification, parent: Receipt | None, since: datetime) -> Receipt | None:
        """Looks for a message carrying this notification's id: in the parent's thread for a follow-up,
        else in the channel's history. Raises DeliveryError when Slack cannot be asked now."""
        args: dict[str, Any] = {}
        if parent is not None and parent.channel and parent.ts:
            channel: str | None = parent.channel
            method, args = "conversations.replies", {"ts": parent.ts}
        else:
            channel = self._channel_id or self._lookup_channel_id()
            method = "conversations.history"
        if channel is None:
            return None
        args = {"channel": channel, "oldest": slack_ts(since), "include_all_metadata": True, "limit": PAGE_SIZE} | args
        for message in self._items(method, "messages", args):
            if notification_id_of(message) == notification.id:
                return Receipt(channel=channel, ts=message.get("ts"))
        return None

    def _update_parent(self, notification: Notification, parent: Receipt) -> None:
        """Shows the group's current status on the incident's first message (idempotent, so a retry is harmless)."""
        text, blocks = render.fallback_text(notification), render.slack_blocks(notification)
        try:
            self._call("chat.update", channel=parent.channel, ts=parent.ts, text=text, blocks=blocks)
        except DeliveryError as error:
            if not (isinstance(error, SlackDeliveryError) and error.refused and error.slack_error in UPDATE_SKIPPABLE):
                raise
            log.warning("slack %s: cannot edit the incident's first message (%s); replying anyway", self.name, error)

    def _items(self, method: str, key: str, args: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every item under `key` ("messages", "channels") that a paginated call returns, page by page."""
        for _ in range(MAX_PAGES):
            response = self._call(method, **args)
            yield from response.get(key) or []
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return
            args = args | {"cursor": cursor}

    def _lookup_channel_id(self) -> str | None:
        """The id of a channel configured by name (conversations.history needs an id). None when the
        bot may not list channels (missing scope) or none has that name: the check cannot be made."""
        name = self.channel.lstrip("#")
        args: dict[str, Any] = {"types": "public_channel,private_channel", "exclude_archived": True, "limit": 1000}
        try:
            channels = self._items("conversations.list", "channels", args)
            found = next((channel for channel in channels if channel.get("name") == name), None)
        except SlackDeliveryError as error:
            if not error.refused:
                raise  # rate limited or HTTP trouble: ask again later
            log.warning("slack %s: cannot look up channel %s (%s)", self.name, self.channel, error)
            return None
        if found is None:
            log.warning("slack %s: no channel %s found; configure its id to detect repeats", self.name, self.channel)
            return None
        self._channel_id = str(found.get("id"))
        return self._channel_id

    def _call(self, method: str, **args: Any) -> SlackResponse:
        """One Web API call ("chat.postMessage" -> WebClient.chat_postMessage), failures as DeliveryError."""
        call: Callable[..., SlackResponse] = getattr(self._client, method.replace(".", "_"))
        try:
            return call(**args)
        except SlackApiError as exc:
            raise slack_api_error(exc, f"slack {self.name}: {method}") from None
        except (SlackClientError, OSError, http.client.HTTPException) as exc:
            raise network_error(exc, f"slack {self.name}: {method}") from None


class _Webhook:
    """A POST to a secret URL; the receiver cannot be asked afterwards whether it got a message,
    so a send interrupted by a crash is repeated (at least once)."""

    def __init__(self, name: str, *, url: Secret, timeout_s: float = 10.0) -> None:
        self.name = name
        self._target = f"webhook {name}"
        self._url = _http_url(url, self._target)
        self._timeout_s = timeout_s

    def find_delivered(self, notification: Notification, parent: Receipt | None, since: datetime) -> Receipt | None:
        return None


class SlackWebhookNotifier(_Webhook):
    """Slack incoming webhook: one new message per notification (webhooks cannot thread or edit)."""

    def send(self, notification: Notification, parent: Receipt | None) -> Receipt:
        client = WebhookClient(
            self._url.reveal(),
            timeout=cast(int, self._timeout_s),  # annotated int, but urlopen takes a float
            logger=_sdk_log,
            retry_handlers=[],
        )
        try:
            response = client.send(text=render.fallback_text(notification), blocks=render.slack_blocks(notification))
        except (SlackClientError, OSError, http.client.HTTPException) as exc:
            raise network_error(exc, self._target) from None
        if response.status_code != 200:
            raise http_status_error(response.status_code, response.headers, self._target, _error_code(response.body))
        return Receipt(detail={"status": response.status_code})


class WebhookNotifier(_Webhook):
    """Generic JSON webhook (pager bridges): POSTs an Alertmanager-webhook-shaped body with an
    `Idempotency-Key: specwatch-<notification id>` header so the receiver can drop repeats."""

    def send(self, notification: Notification, parent: Receipt | None) -> Receipt:
        body = json.dumps(alertmanager_payload(notification), default=str).encode("utf-8")
        request = urllib.request.Request(
            self._url.reveal(), data=body, method="POST", headers=self._headers(notification)
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                response.read()
                return Receipt(detail={"status": response.status})
        except urllib.error.HTTPError as exc:
            with exc:
                raise http_status_error(exc.code, exc.headers, self._target) from None
        except (OSError, http.client.HTTPException) as exc:
            raise network_error(exc, self._target) from None

    @staticmethod
    def _headers(notification: Notification) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Idempotency-Key": f"specwatch-{notification.id}",
            "User-Agent": "specwatch",
        }


class AlertmanagerNotifier:
    """Alertmanager's `POST /api/v2/alerts` (alerts.alertmanager shapes the body): every notification is a
    post of its alerts, firing ones with endsAt `lease` from now, resolved ones with endsAt their
    resolution time. Alertmanager merges posts of the same labels, so posting again is harmless: after an
    interrupted attempt the notification is simply posted again."""

    def __init__(
        self,
        name: str,
        *,
        url: str,
        lease: timedelta,
        authorization: Secret | None = None,
        static_labels: Mapping[str, str] | None = None,
        generator_url: str = "",
        timeout_s: float = 10.0,
    ) -> None:
        self.name = name
        self.lease = lease
        self._endpoint = url.rstrip("/") + "/api/v2/alerts"
        self._authorization = authorization
        self._static_labels = dict(static_labels or {})
        self._generator_url = generator_url
        self._timeout_s = timeout_s
        self._target = f"alertmanager {name}"

    def send(self, notification: Notification, parent: Receipt | None) -> Receipt:
        alerts = postable_alerts(
            notification.alerts,
            datetime.now(UTC),  # Alertmanager judges endsAt by its own clock, not the outbox's
            lease=self.lease,
            static_labels=self._static_labels,
            fallback_url=self._generator_url,
        )
        if not alerts:
            return Receipt(detail={"alerts": 0})
        body = json.dumps(alerts).encode("utf-8")
        request = urllib.request.Request(self._endpoint, data=body, method="POST", headers=self._headers())
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                response.read()
                return Receipt(detail={"status": response.status, "alerts": len(alerts)})
        except urllib.error.HTTPError as exc:
            with exc:
                reason = _alertmanager_reason(exc) if exc.code == 400 else ""
                raise http_status_error(exc.code, exc.headers, self._target, reason) from None
        except (OSError, http.client.HTTPException) as exc:
            raise network_error(exc, self._target) from None

    def find_delivered(self, notification: Notification, parent: Receipt | None, since: datetime) -> Receipt | None:
        return None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": "specwatch"}
        if self._authorization is not None:
            headers["Authorization"] = self._authorization.reveal()
        return headers


def _alertmanager_reason(error: urllib.error.HTTPError) -> str:
    """Why Alertmanager refused a post ("invalid label set: ..."): its 400 body is a JSON string."""
    text = error.read(1000).decode("utf-8", errors="replace")
    try:
        decoded: Any = json.loads(text)
    except ValueError:
        decoded = text
    if isinstance(decoded, dict):
        decoded = decoded.get("message", "")
    return render.truncate(" ".join(str(decoded).split()), 200)


def alertmanager_authorization(name: str, receiver: ReceiverConfig) -> Secret | None:
    """The Authorization header's value: a bearer token, basic auth, or None when neither is configured."""
    if receiver.bearer_token.configured:
        return Secret("Bearer " + _read_secret(name, "bearer_token", receiver.bearer_token).reveal())
    if receiver.basic_auth_user:
        password = _read_secret(name, "basic_auth_password", receiver.basic_auth_password).reveal()
        pair = f"{receiver.basic_auth_user}:{password}".encode()
        return Secret("Basic " + base64.b64encode(pair).decode("ascii"))
    return None


def build_notifier(name: str, receiver: ReceiverConfig) -> Notifier:
    """The notifier for receiver `name`. Raises ValueError (naming the receiver and where the secret
    should come from, never its value) when a configured secret is missing. A slack receiver with both
    bot_token and url uses the bot token (threads and edits need it)."""
    if receiver.type == "console":
        return ConsoleNotifier(name)
    if receiver.type == "alertmanager":
        return AlertmanagerNotifier(
            name,
            url=receiver.alertmanager_url,
            lease=window_length(receiver.lease),
            authorization=alertmanager_authorization(name, receiver),
            static_labels=receiver.static_labels,
            generator_url=receiver.generator_url,
            timeout_s=receiver.timeout_s,
        )
    if receiver.type == "slack" and receiver.bot_token.configured:
        token = _read_secret(name, "bot_token", receiver.bot_token)
        return SlackNotifier(
            name, channel=receiver.channel, token=token, api_url=receiver.slack_api_url, timeout_s=receiver.timeout_s
        )
    url = _read_secret(name, "url", receiver.url)
    if receiver.type == "slack":
        return SlackWebhookNotifier(name, url=url, timeout_s=receiver.timeout_s)
    return WebhookNotifier(name, url=url, timeout_s=receiver.timeout_s)


def slack_metadata(notification: Notification) -> dict[str, Any]:
    payload = {
        "notification_id": notification.id,
        "group_key": notification.group_key,
        "incident": notification.incident,
    }
    return {"event_type": METADATA_EVENT, "event_payload": payload}


def notification_id_of(message: Mapping[str, Any]) -> int | None:
    """The notification id in a Slack message's specwatch metadata, if it has any."""
    metadata = message.get("metadata") or {}
    if metadata.get("event_type") != METADATA_EVENT:
        return None
    value: Any = (metadata.get("event_payload") or {}).get("notification_id")
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def slack_ts(moment: datetime) -> str:
    """A datetime as a Slack timestamp; a naive one is taken as UTC (as the database stores them)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"{moment.timestamp():.6f}"


def alertmanager_payload(notification: Notification) -> dict[str, Any]:
    """The body Alertmanager's webhook receiver sends (version 4), plus notificationId, kind and incident."""
    alerts = notification.alerts
    return {
        "version": "4",
        "groupKey": notification.group_key,
        "status": notification.status,
        "receiver": notification.receiver,
        "groupLabels": dict(notification.group_labels),
        "commonLabels": _common([alert.labels for alert in alerts]),
        "commonAnnotations": _common([alert.annotations for alert in alerts]),
        "externalURL": "",
        "alerts": [alert.to_dict() for alert in alerts],
        "notificationId": notification.id,
        "kind": notification.kind,
        "incident": notification.incident,
    }


def slack_api_error(exc: SlackApiError, target: str) -> SlackDeliveryError:
    """A Slack Web API refusal: 429 carries Retry-After; the Slack error code goes in the message."""
    response = exc.response
    data = response.data if isinstance(response.data, dict) else {}
    code = _error_code(str(data.get("error") or ""))
    error = http_status_error(response.status_code, response.headers or {}, target, code)
    return SlackDeliveryError(str(error), status=response.status_code, slack_error=code, retry_after=error.retry_after)


def http_status_error(status: int, headers: Mapping[str, Any] | Any, target: str, code: str = "") -> DeliveryError:
    detail = f" ({code})" if code else ""
    if status == 429:
        retry_after = _retry_after(headers)
        return DeliveryError(f"{target}: rate limited, retry after {retry_after} s{detail}", retry_after=retry_after)
    if status == 200:
        return DeliveryError(f"{target}: Slack refused it{detail}")
    return DeliveryError(f"{target}: HTTP {status}{detail}")


def network_error(exc: BaseException, target: str) -> DeliveryError:
    """A failure below HTTP. A timeout, or a connection lost after the request went out, may have
    delivered it; a refused connection (urllib wraps errors before sending in URLError) did not.
    Messages name the error's kind only, never its text, which can quote a URL."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return DeliveryError(f"{target}: timed out; it may have been delivered", maybe_delivered=True)
    what = reason.strerror if isinstance(reason, OSError) and reason.strerror else type(reason).__name__
    what = "invalid request" if isinstance(reason, str) else what
    if isinstance(exc, urllib.error.URLError):
        return DeliveryError(f"{target}: cannot connect ({what})")
    if isinstance(exc, OSError | http.client.HTTPException):
        return DeliveryError(f"{target}: connection lost before a reply ({what})", maybe_delivered=True)
    return DeliveryError(f"{target}: request failed ({what})")


def _retry_after(headers: Mapping[str, Any] | Any) -> float | None:
    value: Any = headers.get("Retry-After") or headers.get("retry-after")
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


def _error_code(text: str) -> str:
    """A Slack error code ("channel_not_found") if `text` is one; anything else is not repeated."""
    text = text.strip()
    return text if SLACK_ERROR_CODE.match(text) and text != "ok" else ""


def _common(mappings: list[dict[str, Any]]) -> dict[str, Any]:
    if not mappings:
        return {}
    first, *rest = mappings
    return {key: value for key, value in first.items() if all(key in m and m[key] == value for m in rest)}


def _http_url(secret: Secret, target: str) -> Secret:
    if not secret.reveal().lower().startswith(("http://", "https://")):
        raise ValueError(f"{target}: the url must start with http:// or https://")
    return secret


def _read_secret(receiver: str, key: str, source: SecretSource) -> Secret:
    try:
        secret = source.read()
    except SecretUnavailable as exc:
        raise ValueError(f"receiver {receiver}: {key}: {exc}") from None
    if secret is None:
        raise ValueError(f"receiver {receiver}: {key} is not set ({source.describe()} is missing or empty)")
    return secret
