#!/usr/bin/env bash
# Deploy session_core to a Google Cloud project: idempotent, safe to re-run.
#
#   deploy/deploy.sh --project P --region R [--schedule CRON] [--ttl] [--dry-run]
#
# Settings: any SESSION_* variable in the environment is passed to the functions
# (see the README's settings table); PROJECT and REGION may also come from the
# environment. --dry-run prints every command, in order, and runs none.
set -euo pipefail

PROJECT="${PROJECT:-}"
REGION="${REGION:-}"
SCHEDULE="${SCHEDULE:-*/15 * * * *}"
TTL=0
DRY_RUN=0
RUNTIME="${RUNTIME:-python312}"
SOURCE_DIR="$(cd "$(dirname "$0")/.." && pwd)"

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --project) PROJECT="$2"; shift 2 ;;
    --region) REGION="$2"; shift 2 ;;
    --schedule) SCHEDULE="$2"; shift 2 ;;
    --ttl) TTL=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done
[ -n "$PROJECT" ] || { echo "error: --project (or PROJECT) is required" >&2; exit 2; }
[ -n "$REGION" ] || { echo "error: --region (or REGION) is required" >&2; exit 2; }

KIND="${SESSION_KIND:-viur-session}"
BUDGET="${SESSION_TIME_BUDGET:-300}"
QUEUE=session-tasks
QUEUE_PATH="projects/$PROJECT/locations/$REGION/queues/$QUEUE"
TOPIC=kill-user
DEAD_LETTER=kill-user-dead-letter
RUNTIME_SA="session-functions@$PROJECT.iam.gserviceaccount.com"
SCHEDULER_SA="session-scheduler@$PROJECT.iam.gserviceaccount.com"
TASKS_SA="session-tasks@$PROJECT.iam.gserviceaccount.com"
URL_BASE="https://$REGION-$PROJECT.cloudfunctions.net"
TASK_URL="$URL_BASE/session_task"
CLEAR_URL="$URL_BASE/clear_sessions"
# HTTP functions may run 3600 s, event-driven ones 540 s; each step stops at the budget.
HTTP_TIMEOUT=$(( BUDGET + 240 ))
[ "$HTTP_TIMEOUT" -le 3600 ] || HTTP_TIMEOUT=3600
EVENT_TIMEOUT=540

# Every command goes through run (or ensure): --dry-run prints instead of running.
run() {
  if [ "$DRY_RUN" = 1 ]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}
# ensure "<check command>" -- <create command...>: create only what is missing.
ensure() {
  local check="$1"; shift; [ "$1" = "--" ] && shift
  if [ "$DRY_RUN" = 1 ]; then
    printf '+ %s || ' "$check"; printf '%q ' "$@"; printf '\n'
  elif ! eval "$check" >/dev/null 2>&1; then
    "$@"
  fi
}

ENV_VARS="GOOGLE_CLOUD_PROJECT=$PROJECT,SESSION_TASKS_QUEUE=$QUEUE_PATH,SESSION_TASK_URL=$TASK_URL"
ENV_VARS="$ENV_VARS,SESSION_TASKS_SERVICE_ACCOUNT=$TASKS_SA,SESSION_TASK_AUDIENCE=$TASK_URL"
while IFS='=' read -r name value; do
  case "$name" in
    SESSION_TASKS_QUEUE|SESSION_TASK_URL|SESSION_TASKS_SERVICE_ACCOUNT|SESSION_TASK_AUDIENCE) ;;
    SESSION_*) ENV_VARS="$ENV_VARS,$name=$value" ;;
  esac
done < <(env | sort)

# 1. APIs
run gcloud services enable --project "$PROJECT" \
  cloudfunctions.googleapis.com run.googleapis.com cloudbuild.googleapis.com artifactregistry.googleapis.com \
  eventarc.googleapis.com pubsub.googleapis.com cloudtasks.googleapis.com cloudscheduler.googleapis.com \
  datastore.googleapis.com

# 2. Service accounts, least privilege
for sa in session-functions session-scheduler session-tasks; do
  ensure "gcloud iam service-accounts describe $sa@$PROJECT.iam.gserviceaccount.com --project $PROJECT" -- \
    gcloud iam service-accounts create "$sa" --project "$PROJECT" --display-name "session_core $sa"
done
for role in roles/datastore.user roles/cloudtasks.enqueuer; do
  run gcloud projects add-iam-policy-binding "$PROJECT" --member "serviceAccount:$RUNTIME_SA" --role "$role" \
    --condition None --quiet
done
# The functions enqueue tasks that carry the tasks account's OIDC token: act-as on that account only.
run gcloud iam service-accounts add-iam-policy-binding "$TASKS_SA" --project "$PROJECT" \
  --member "serviceAccount:$RUNTIME_SA" --role roles/iam.serviceAccountUser

# 3. The Cloud Tasks queue: explicit rates, well below Datastore's 500/50/5 ramp-up
#    (each step runs SESSION_DELETES_IN_FLIGHT commits of <= 500 keys at a time).
ensure "gcloud tasks queues describe $QUEUE --location $REGION --project $PROJECT" -- \
  gcloud tasks queues create "$QUEUE" --location "$REGION" --project "$PROJECT"
run gcloud tasks queues update "$QUEUE" --location "$REGION" --project "$PROJECT" \
  --max-dispatches-per-second 5 --max-concurrent-dispatches 4 \
  --max-attempts 20 --min-backoff 10s --max-backoff 600s --max-doublings 5

# 4. The kill-user topic and its dead-letter topic
ensure "gcloud pubsub topics describe $TOPIC --project $PROJECT" -- \
  gcloud pubsub topics create "$TOPIC" --project "$PROJECT"
ensure "gcloud pubsub topics describe $DEAD_LETTER --project $PROJECT" -- \
  gcloud pubsub topics create "$DEAD_LETTER" --project "$PROJECT"

# 5. The three gen2 functions, all private
COMMON=(--gen2 --runtime "$RUNTIME" --region "$REGION" --project "$PROJECT" --source "$SOURCE_DIR"
        --service-account "$RUNTIME_SA" --no-allow-unauthenticated --set-env-vars "$ENV_VARS" --quiet)
run gcloud functions deploy clear_sessions "${COMMON[@]}" --entry-point clear_sessions \
  --trigger-http --timeout "${HTTP_TIMEOUT}s"
run gcloud functions deploy session_task "${COMMON[@]}" --entry-point session_task \
  --trigger-http --timeout "${HTTP_TIMEOUT}s"
run gcloud functions deploy kill_user_sessions "${COMMON[@]}" --entry-point kill_user_sessions \
  --trigger-topic "$TOPIC" --trigger-service-account "$RUNTIME_SA" --retry --timeout "${EVENT_TIMEOUT}s"

# 6. Who may call what: run.invoker on one function each
run gcloud functions add-invoker-policy-binding clear_sessions --region "$REGION" --project "$PROJECT" \
  --member "serviceAccount:$SCHEDULER_SA"
run gcloud functions add-invoker-policy-binding session_task --region "$REGION" --project "$PROJECT" \
  --member "serviceAccount:$TASKS_SA"
run gcloud functions add-invoker-policy-binding kill_user_sessions --region "$REGION" --project "$PROJECT" \
  --member "serviceAccount:$RUNTIME_SA"

# 7. Dead-lettering on the trigger's subscription (Eventarc creates it)
PUBSUB_AGENT="serviceAccount:service-\$(gcloud projects describe $PROJECT --format='value(projectNumber)')@gcp-sa-pubsub.iam.gserviceaccount.com"
SUBSCRIPTION="\$(gcloud eventarc triggers list --location $REGION --project $PROJECT --filter='destination.cloudFunction~kill_user_sessions OR name~kill-user' --format='value(transport.pubsub.subscription)' | head -n 1)"
if [ "$DRY_RUN" = 1 ]; then
  echo "+ gcloud pubsub subscriptions update $SUBSCRIPTION --project $PROJECT --dead-letter-topic $DEAD_LETTER --max-delivery-attempts 10"
  echo "+ gcloud pubsub topics add-iam-policy-binding $DEAD_LETTER --project $PROJECT --member $PUBSUB_AGENT --role roles/pubsub.publisher"
  echo "+ gcloud pubsub subscriptions add-iam-policy-binding $SUBSCRIPTION --project $PROJECT --member $PUBSUB_AGENT --role roles/pubsub.subscriber"
else
  agent=$(eval "echo $PUBSUB_AGENT"); subscription=$(eval "echo $SUBSCRIPTION")
  gcloud pubsub subscriptions update "$subscription" --project "$PROJECT" \
    --dead-letter-topic "$DEAD_LETTER" --max-delivery-attempts 10
  gcloud pubsub topics add-iam-policy-binding "$DEAD_LETTER" --project "$PROJECT" --member "$agent" \
    --role roles/pubsub.publisher
  gcloud pubsub subscriptions add-iam-policy-binding "$subscription" --project "$PROJECT" --member "$agent" \
    --role roles/pubsub.subscriber
fi

# 8. The scheduler job: OIDC token for the function URL, deadline matching the budget
SCHEDULER_ARGS=(--location "$REGION" --project "$PROJECT" --schedule "$SCHEDULE" --uri "$CLEAR_URL"
  --http-method POST --headers Content-Type=application/json --message-body '{}'
  --oidc-service-account-email "$SCHEDULER_SA" --oidc-token-audience "$CLEAR_URL"
  --attempt-deadline "${HTTP_TIMEOUT}s")
ensure "gcloud scheduler jobs describe clear-sessions --location $REGION --project $PROJECT" -- \
  gcloud scheduler jobs create http clear-sessions "${SCHEDULER_ARGS[@]}"
run gcloud scheduler jobs update http clear-sessions "${SCHEDULER_ARGS[@]}"

# 9. Optional: the Datastore TTL policy on `expires`, a backstop behind the cleanup
if [ "$TTL" = 1 ]; then
  run gcloud firestore fields ttls update expires --collection-group "$KIND" --enable-ttl \
    --database "${SESSION_DATABASE:-(default)}" --project "$PROJECT"
fi
if [ "$DRY_RUN" = 1 ]; then
  echo "dry run: nothing was changed"
else
  echo "deployed: $CLEAR_URL (scheduled '$SCHEDULE'), kill-user topic $TOPIC, tasks queue $QUEUE_PATH"
fi
