"""Cloud Tasks dispatch: hand the next step of a chain to ``session_task``.

Only the functions and the command line import this module (it loads
``google.cloud.tasks_v2``); a web app never does.
"""

from __future__ import annotations

import json
from datetime import timedelta

import grpc
from google.api_core import exceptions as gexc
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from google.protobuf import duration_pb2

from session_core.config import Settings
from session_core.errors import DispatchError
from session_core.maintenance.steps import Step


def tasks_client(settings: Settings) -> tasks_v2.CloudTasksClient:
    """A Cloud Tasks client; with CLOUD_TASKS_EMULATOR_HOST an insecure channel to it."""
    if settings.tasks_emulator_host is None:
        return tasks_v2.CloudTasksClient()
    channel = grpc.insecure_channel(settings.tasks_emulator_host)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


class CloudTasksQueue:
    """Enqueue steps as HTTP tasks to ``session_task``; a duplicate task name is success.

    One CreateTask RPC per step; a failure raises DispatchError. With
    ``SESSION_TASKS_SERVICE_ACCOUNT`` the task carries an OIDC token for that
    account with the task URL as audience.
    """

    def __init__(self, client: tasks_v2.CloudTasksClient, settings: Settings) -> None:
        if settings.tasks_queue is None or settings.task_url is None:
            raise ValueError("CloudTasksQueue needs SESSION_TASKS_QUEUE and SESSION_TASK_URL")
        self.client = client
        self.queue = settings.tasks_queue
        self.url = settings.task_url
        self.service_account = settings.tasks_service_account
        self.deadline = min(settings.time_budget + timedelta(seconds=120), timedelta(minutes=30))

    def task(self, step: Step) -> tasks_v2.Task:
        request = tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST,
            url=self.url,
            headers={"Content-Type": "application/json"},
            body=json.dumps(step.to_json()).encode(),
        )
        if self.service_account:
            request.oidc_token = tasks_v2.OidcToken(service_account_email=self.service_account, audience=self.url)
        return tasks_v2.Task(
            name=f"{self.queue}/tasks/{step.task_id}",
            http_request=request,
            dispatch_deadline=duration_pb2.Duration(seconds=int(self.deadline.total_seconds())),
        )

    def __call__(self, step: Step) -> None:
        try:
            self.client.create_task(parent=self.queue, task=self.task(step))
        except gexc.AlreadyExists:
            return  # the same step was enqueued before: Cloud Tasks deduplicated it
        except gexc.GoogleAPICallError as exc:
            raise DispatchError("create_task", exc) from exc


def queue_for(settings: Settings) -> CloudTasksQueue | None:
    """The queue the settings name, with a fresh client; None when no queue is set (steps run inline)."""
    if settings.tasks_queue is None:
        return None
    return CloudTasksQueue(tasks_client(settings), settings)
