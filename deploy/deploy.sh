#!/usr/bin/env bash
# Deploy session_core to a Google Cloud project: idempotent, safe to re-run.
#
#   deploy/deploy.sh --project P --region R --settings FILE [options]
#
#   --settings FILE              the settings file your app loads too (Settings.from_file): a flat JSON
#                                object of strings; exactly it, plus what this script derives, reaches
#                                the functions (the shell's SESSION_* variables are ignored)
#   --schedule CRON              cleanup schedule, UTC (default '*/15 * * * *')
#   --database-location LOC      where to create the database if it is missing (default: the region)
#   --notification-channel NAME  projects/P/notificationChannels/ID that the alerts notify; repeatable
#   --ttl                        also add a Datastore TTL policy on `expires` (a backstop)
#   --destroy                    remove what this script created; keep the database and the sessions
#                                and SESSION_EVENTS_TOPIC (your subscriptions hang on it), pause and
#                                purge the queue (its name cannot be reused for days)
#   --dry-run[=again]            print every command in order and run none: as for a first deploy,
#                                or (=again, and always with --destroy) as for a project where
#                                everything is in place
#   --work-dir DIR               where the files gcloud reads are written (default: a new temporary
#                                directory, kept after a dry run)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
SOURCE_DIR="$(dirname "$HERE")"
PROJECT="" REGION="" SETTINGS="" SCHEDULE="*/15 * * * *" DB_LOCATION="" TTL=0 DESTROY=0 DRY_RUN="" WORK=""
CHANNELS=()
RUNTIME=python312

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "error: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --project) need "$@"; PROJECT="$2"; shift 2 ;;
    --region) need "$@"; REGION="$2"; shift 2 ;;
    --settings) need "$@"; SETTINGS="$2"; shift 2 ;;
    --schedule) need "$@"; SCHEDULE="$2"; shift 2 ;;
    --database-location) need "$@"; DB_LOCATION="$2"; shift 2 ;;
    --notification-channel) need "$@"; CHANNELS+=("$2"); shift 2 ;;
    --work-dir) need "$@"; WORK="$2"; shift 2 ;;
    --ttl) TTL=1; shift ;;
    --destroy) DESTROY=1; shift ;;
    --dry-run) DRY_RUN=first; shift ;;
    --dry-run=again) DRY_RUN=again; shift ;;
    -h|--help) usage 0 ;;
    *) echo "error: unknown argument: $1" >&2; usage 2 ;;
  esac
done
# A dry run of --destroy shows what it would remove from a project where everything is in place.
[ "$DESTROY$DRY_RUN" != 1first ] || DRY_RUN=again
[ -n "$PROJECT" ] || die "--project is required"
[ -n "$REGION" ] || die "--region is required"
[ -n "$SETTINGS" ] || [ "$DESTROY" = 1 ] || die "--settings FILE is required (the settings file your app loads too)"
command -v python3 >/dev/null || die "python3 is required (it checks the settings file and writes the files gcloud reads)"
for channel in ${CHANNELS[@]+"${CHANNELS[@]}"}; do
  [[ "$channel" =~ ^projects/[^/]+/notificationChannels/[^/]+$ ]] ||
    die "--notification-channel $channel: expected projects/P/notificationChannels/ID"
done

render() { python3 "$HERE/render.py" "$@"; }

# -- names ------------------------------------------------------------------------------------------
QUEUE=session-tasks
QUEUE_PATH="projects/$PROJECT/locations/$REGION/queues/$QUEUE"
TOPIC=kill-user
DEAD_LETTER=kill-user-dead-letter   # the topic, and the subscription that keeps what reaches it
JOB=clear-sessions
FUNCTIONS=(clear_sessions session_task kill_user_sessions)
ACCOUNTS=(session-functions session-scheduler session-tasks session-builder)
sa() { echo "$1@$PROJECT.iam.gserviceaccount.com"; }
RUNTIME_SA="$(sa session-functions)"
SCHEDULER_SA="$(sa session-scheduler)"
TASKS_SA="$(sa session-tasks)"
BUILDER_SA="$(sa session-builder)"
# Project-level roles, each narrowed by an IAM condition where the resource allows one (set in
# "settings" below, once the database is known): ROLE<TAB>CONDITION (an expression, or None).
# cloudtasks.enqueuer is granted on the queue itself (step "queue"), act-as on one account only.
RUNTIME_ROLES=(roles/datastore.user)
BUILDER_ROLES=(roles/logging.logWriter roles/artifactregistry.writer roles/storage.objectViewer)
# What earlier versions granted project-wide without a condition: removed by a deploy, and by --destroy.
LEGACY_ROLES=(roles/datastore.user roles/cloudtasks.enqueuer roles/cloudbuild.builds.builder)
roles_of() { case "$1" in session-functions) printf '%s\n' "${RUNTIME_ROLES[@]}" ;; session-builder) printf '%s\n' "${BUILDER_ROLES[@]}" ;; esac; }
METRICS=()
for file in "$HERE"/metrics/*.json; do METRICS+=("$(basename "$file" .json)"); done
POLICIES=(no-cleanup failed-runs dead-letters task-errors)

if [ -z "$WORK" ]; then
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/session-core-deploy.XXXXXX")"
  [ -n "$DRY_RUN" ] || trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"

# -- one runner for every command ---------------------------------------------------------------------
# Every gcloud command goes through run, lookup or value, which print it ("+ ...") before running it;
# with --dry-run they only print. A failing command stops the script with a message naming the step.
STEP=""
step() { STEP="$1"; echo "== $1"; }
show() {
  local word out="+"
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then out+=" $word"; else out+=" '${word//\'/\'\\\'\'}'"; fi
  done
  echo "$out"
}
fail() { echo "error: step \"$STEP\" failed: $*" >&2; exit 1; }
run() {
  show "$@"
  [ -n "$DRY_RUN" ] && return 0
  "$@" || fail "$(show "$@" | cut -c3-)"
}
# New service accounts reach IAM a little after they are created: retry a binding that names one.
run_retrying() {
  show "$@"
  [ -n "$DRY_RUN" ] && return 0
  local attempt delay=5
  for attempt in 1 2 3 4 5 6; do
    "$@" && return 0
    [ "$attempt" = 6 ] && break
    echo "   retrying in ${delay}s (new service accounts take a while to reach IAM)" >&2
    sleep "$delay"; delay=$(( delay * 2 ))
  done
  fail "$(show "$@" | cut -c3-) (6 attempts)"
}
# lookup VAR ANSWER -- CMD: VAR gets CMD's output, or "" when what it describes does not exist; any
# other failure stops the script. A dry run answers "" as for a first deploy, ANSWER with =again.
lookup() {
  local var="$1" answer="$2" out err status=0; shift 3
  show "$@"
  if [ -n "$DRY_RUN" ]; then
    [ "$DRY_RUN" = again ] || answer=""
    printf -v "$var" '%s' "$answer"; return 0
  fi
  err="$WORK/stderr"
  out="$("$@" 2>"$err")" || status=$?
  if [ "$status" != 0 ]; then
    grep -qiE 'NOT_FOUND|not found|does not exist|404' "$err" || { cat "$err" >&2; fail "$(show "$@" | cut -c3-)"; }
    out=""
  fi
  printf -v "$var" '%s' "$out"
}
# value VAR ANSWER -- CMD: VAR gets CMD's output, which must not be empty (a dry run answers ANSWER).
value() {
  local var="$1" answer="$2"; shift 3
  lookup "$var" "$answer" -- "$@"
  [ "$DRY_RUN" = first ] && printf -v "$var" '%s' "$answer"
  [ -n "${!var}" ] || fail "$(show "$@" | cut -c3-) printed nothing"
}

AT=(--project "$PROJECT")
IN=(--location "$REGION" --project "$PROJECT")
FN=(--gen2 --region "$REGION" --project "$PROJECT")
uri_placeholder() { echo "https://${1//_/-}-dryrun-${REGION}.a.run.app"; }

# -- settings and what follows from them -------------------------------------------------------------
KIND=viur-session DATABASE="(default)" BUDGET=300 SHARDS=16 EVENTS_PROJECT="" EVENTS_TOPIC=""
if [ -n "$SETTINGS" ]; then
  # render.py writes the plan as JSON; `render get` hands each value back whole, NUL-terminated (a
  # character no value holds), so a newline or tab in a value can never start another entry.
  render settings "$SETTINGS" "$PROJECT" "$WORK/plan.json" || exit 2
  { IFS= read -r -d '' KIND && IFS= read -r -d '' DATABASE && IFS= read -r -d '' BUDGET && IFS= read -r -d '' SHARDS &&
    IFS= read -r -d '' EVENTS_PROJECT && IFS= read -r -d '' EVENTS_TOPIC; } < <(
    render get "$WORK/plan.json" kind database budget shards events_project events_topic) ||
    die "deploy/render.py get: the plan in $WORK/plan.json is incomplete"
fi
# The conditions that narrow each project-level role (CEL; no commas: gcloud splits --condition on them).
condition_of() {
  case "$1" in
    roles/datastore.user) echo "resource.name == \"projects/$PROJECT/databases/$DATABASE\"" ;;
    roles/artifactregistry.writer)
      echo "resource.name.startsWith(\"projects/$PROJECT/locations/$REGION/repositories/gcf-artifacts\")" ;;
    roles/storage.objectViewer) echo "resource.name.startsWith(\"projects/_/buckets/gcf-v2-sources-\")" ;;
    *) echo None ;;
  esac
}
# gcloud's --condition for a role: None, or expression=...,title=... (the title names what it allows).
condition_flag() {
  local expression
  expression="$(condition_of "$1")"
  if [ "$expression" = None ]; then echo None; else echo "expression=$expression,title=session_core ${1#roles/}"; fi
}
PERIOD="$(render period "$SCHEDULE")" || exit 2
# HTTP functions may run 3600 s, event-driven ones 540 s; each step stops at the budget.
HTTP_TIMEOUT=$(( BUDGET + 240 )); [ "$HTTP_TIMEOUT" -le 3600 ] || HTTP_TIMEOUT=3600
EVENT_TIMEOUT=540
# Cloud Scheduler waits at most 30 minutes for an answer.
DEADLINE=$HTTP_TIMEOUT; [ "$DEADLINE" -le 1800 ] || DEADLINE=1800
# A run that answers 5xx (main.py's 503) is retried within its own period, before the next one is due.
RETRY_MAX_BACKOFF=$(( PERIOD / 4 )); [ "$RETRY_MAX_BACKOFF" -ge 30 ] || RETRY_MAX_BACKOFF=30
# The alerts: no cleanup within 3 periods; 3 failures within 3 periods.
WINDOW=$(( PERIOD * 3 )); [ "$WINDOW" -le 86400 ] || WINDOW=86400
# A kill-all or parallel cleanup runs one task per shard at once: never throttle it below that.
CONCURRENCY=$SHARDS; [ "$CONCURRENCY" -ge 4 ] || CONCURRENCY=4
DB_LOCATION="${DB_LOCATION:-$REGION}"

# =====================================================================================================
destroy() {
  step "dashboard and alert policies"
  local name
  lookup name "projects/$PROJECT/dashboards/dry-run" -- gcloud monitoring dashboards list "${AT[@]}" \
    --filter "displayName=\"$(render display-name "$HERE/dashboard.json")\"" --format 'value(name)'
  [ -z "$name" ] || run gcloud monitoring dashboards delete "$name" "${AT[@]}" --quiet
  for policy in "${POLICIES[@]}"; do
    lookup name "projects/$PROJECT/alertPolicies/dry-run-$policy" -- gcloud alpha monitoring policies list "${AT[@]}" \
      --filter "displayName=\"$(render display-name "$HERE/alerts/$policy.json")\"" --format 'value(name)'
    while read -r found; do
      [ -z "$found" ] || run gcloud alpha monitoring policies delete "$found" "${AT[@]}" --quiet
    done <<< "$name"
  done

  step "log-based metrics"
  for metric in "${METRICS[@]}"; do
    lookup name "$metric" -- gcloud logging metrics describe "$metric" "${AT[@]}" --format 'value(name)'
    [ -z "$name" ] || run gcloud logging metrics delete "$metric" "${AT[@]}" --quiet
  done

  step "scheduler job"
  lookup name "$JOB" -- gcloud scheduler jobs describe "$JOB" "${IN[@]}" --format 'value(name)'
  [ -z "$name" ] || run gcloud scheduler jobs delete "$JOB" "${IN[@]}" --quiet

  step "TTL policy"
  for group in "$KIND" session_core-run; do
    lookup name "expires" -- gcloud firestore fields ttls list --collection-group "$group" --database "$DATABASE" \
      "${AT[@]}" --format 'value(name)'
    [ -z "$name" ] || run gcloud firestore fields ttls update expires --collection-group "$group" --disable-ttl \
      --database "$DATABASE" "${AT[@]}" --async
  done

  step "functions"
  for function in "${FUNCTIONS[@]}"; do
    lookup name "$function" -- gcloud functions describe "$function" "${FN[@]}" --format 'value(name)'
    [ -z "$name" ] || run gcloud functions delete "$function" "${FN[@]}" --quiet
  done

  step "topics"
  lookup name "$DEAD_LETTER" -- gcloud pubsub subscriptions describe "$DEAD_LETTER" "${AT[@]}" --format 'value(name)'
  [ -z "$name" ] || run gcloud pubsub subscriptions delete "$DEAD_LETTER" "${AT[@]}" --quiet
  for topic in "$TOPIC" "$DEAD_LETTER"; do
    lookup name "$topic" -- gcloud pubsub topics describe "$topic" "${AT[@]}" --format 'value(name)'
    [ -z "$name" ] || run gcloud pubsub topics delete "$topic" "${AT[@]}" --quiet
  done

  step "queue (paused and purged, not deleted: its name could not be reused for days)"
  lookup name "RUNNING" -- gcloud tasks queues describe "$QUEUE" "${IN[@]}" --format 'value(state)'
  if [ -n "$name" ]; then
    local held
    lookup held roles/cloudtasks.enqueuer -- gcloud tasks queues get-iam-policy "$QUEUE" "${IN[@]}" \
      --flatten 'bindings[].members' --filter "bindings.members=serviceAccount:$RUNTIME_SA" --format 'value(bindings.role)'
    ! grep -qx roles/cloudtasks.enqueuer <<< "$held" ||
      run gcloud tasks queues remove-iam-policy-binding "$QUEUE" "${IN[@]}" --member "serviceAccount:$RUNTIME_SA" \
        --role roles/cloudtasks.enqueuer
    [ "$name" = PAUSED ] || run gcloud tasks queues pause "$QUEUE" "${IN[@]}"
    run gcloud tasks queues purge "$QUEUE" "${IN[@]}" --quiet
  fi

  step "service accounts"
  local held role
  for account in session-functions session-builder; do
    lookup held "$(roles_of "$account")" -- gcloud projects get-iam-policy "$PROJECT" --flatten 'bindings[].members' \
      --filter "bindings.members=serviceAccount:$(sa "$account")" --format 'value(bindings.role)'
    for role in $( (roles_of "$account"; printf '%s\n' "${LEGACY_ROLES[@]}") | sort -u); do
      grep -qx "$role" <<< "$held" || continue
      run gcloud projects remove-iam-policy-binding "$PROJECT" --member "serviceAccount:$(sa "$account")" \
        --role "$role" --all --quiet   # with or without a condition
    done
  done
  for account in "${ACCOUNTS[@]}"; do
    lookup name "$(sa "$account")" -- gcloud iam service-accounts describe "$(sa "$account")" "${AT[@]}" --format 'value(email)'
    [ -z "$name" ] || run gcloud iam service-accounts delete "$(sa "$account")" "${AT[@]}" --quiet
  done

  echo "kept: database $DATABASE and its sessions; queue $QUEUE (paused and purged); the enabled APIs;"
  echo "  the lifecycle events' topic, if SESSION_EVENTS_TOPIC named one (your subscriptions hang on it)"
}

# =====================================================================================================
deploy() {
  local found state uri_task uri_clear trigger subscription number name file
  step "APIs"
  run gcloud services enable "${AT[@]}" \
    cloudfunctions.googleapis.com run.googleapis.com cloudbuild.googleapis.com artifactregistry.googleapis.com \
    eventarc.googleapis.com pubsub.googleapis.com cloudtasks.googleapis.com cloudscheduler.googleapis.com \
    datastore.googleapis.com firestore.googleapis.com iam.googleapis.com cloudresourcemanager.googleapis.com \
    logging.googleapis.com monitoring.googleapis.com

  step "database"
  lookup found $'DATASTORE_MODE\tPESSIMISTIC' -- gcloud firestore databases describe --database "$DATABASE" "${AT[@]}" \
    --format 'value(type,concurrencyMode)'
  if [ -z "$found" ]; then
    run gcloud firestore databases create --database "$DATABASE" --location "$DB_LOCATION" --type datastore-mode "${AT[@]}"
  else
    case "$found" in
      DATASTORE_MODE*) ;;
      *) fail "database $DATABASE is in Native mode ($found); session_core needs Firestore in Datastore mode:" \
              "name another database with SESSION_DATABASE in the settings file" ;;
    esac
    if [ "$TTL" = 1 ] && [[ "$found" == *OPTIMISTIC_WITH_ENTITY_GROUPS* ]]; then
      fail "database $DATABASE uses the concurrency mode 'optimistic with entity groups', which has no TTL" \
           "policies: deploy without --ttl (the scheduled cleanup does the work)"
    fi
  fi

  step "service accounts"
  for account in "${ACCOUNTS[@]}"; do
    lookup found "$(sa "$account")" -- gcloud iam service-accounts describe "$(sa "$account")" "${AT[@]}" --format 'value(email)'
    [ -n "$found" ] || run gcloud iam service-accounts create "$account" "${AT[@]}" --display-name "session_core $account"
  done
  # Bindings of earlier versions, project-wide and without a condition, go: only the narrowed ones stay.
  local held role
  for account in session-functions session-builder; do
    lookup held "" -- gcloud projects get-iam-policy "$PROJECT" --flatten 'bindings[].members' \
      --filter "bindings.members=serviceAccount:$(sa "$account") AND NOT bindings.condition:*" \
      --format 'value(bindings.role)'
    for role in "${LEGACY_ROLES[@]}"; do
      grep -qx "$role" <<< "$held" || continue
      run gcloud projects remove-iam-policy-binding "$PROJECT" --member "serviceAccount:$(sa "$account")" \
        --role "$role" --condition None --quiet
    done
  done
  # The functions' account reads and writes the sessions' database only.
  for role in "${RUNTIME_ROLES[@]}"; do
    run_retrying gcloud projects add-iam-policy-binding "$PROJECT" --member "serviceAccount:$RUNTIME_SA" --role "$role" \
      --condition "$(condition_flag "$role")" --quiet
  done
  # Builds the functions (projects since mid-2024 may have a default build account that cannot): what
  # Google lists for a custom build account, narrowed to the functions' images and sources.
  for role in "${BUILDER_ROLES[@]}"; do
    run_retrying gcloud projects add-iam-policy-binding "$PROJECT" --member "serviceAccount:$BUILDER_SA" --role "$role" \
      --condition "$(condition_flag "$role")" --quiet
  done
  # The functions enqueue tasks that carry the tasks account's OIDC token: act-as on that account only.
  run_retrying gcloud iam service-accounts add-iam-policy-binding "$TASKS_SA" "${AT[@]}" \
    --member "serviceAccount:$RUNTIME_SA" --role roles/iam.serviceAccountUser

  step "queue"
  lookup state RUNNING -- gcloud tasks queues describe "$QUEUE" "${IN[@]}" --format 'value(state)'
  if [ -z "$state" ]; then
    run gcloud tasks queues create "$QUEUE" "${IN[@]}"
  elif [ "$state" = PAUSED ]; then
    run gcloud tasks queues resume "$QUEUE" "${IN[@]}"   # paused by --destroy
  fi
  run gcloud tasks queues update "$QUEUE" "${IN[@]}" \
    --max-dispatches-per-second 5 --max-concurrent-dispatches "$CONCURRENCY" \
    --max-attempts 20 --min-backoff 10s --max-backoff 600s --max-doublings 5
  # The functions enqueue steps on this queue, and on no other.
  run_retrying gcloud tasks queues add-iam-policy-binding "$QUEUE" "${IN[@]}" --member "serviceAccount:$RUNTIME_SA" \
    --role roles/cloudtasks.enqueuer

  step "topics"
  for topic in "$TOPIC" "$DEAD_LETTER"; do
    lookup found "projects/$PROJECT/topics/$topic" -- gcloud pubsub topics describe "$topic" "${AT[@]}" --format 'value(name)'
    [ -n "$found" ] || run gcloud pubsub topics create "$topic" "${AT[@]}"
  done
  # Lifecycle events (SESSION_EVENTS_TOPIC): the functions may publish to that topic, and to no other.
  if [ -n "$EVENTS_TOPIC" ]; then
    local events_at=(--project "$EVENTS_PROJECT")
    lookup found "projects/$EVENTS_PROJECT/topics/$EVENTS_TOPIC" -- gcloud pubsub topics describe "$EVENTS_TOPIC" \
      "${events_at[@]}" --format 'value(name)'
    [ -n "$found" ] || run gcloud pubsub topics create "$EVENTS_TOPIC" "${events_at[@]}"
    run_retrying gcloud pubsub topics add-iam-policy-binding "$EVENTS_TOPIC" "${events_at[@]}" \
      --member "serviceAccount:$RUNTIME_SA" --role roles/pubsub.publisher
  fi
  # Pub/Sub drops what reaches a topic without subscriptions: keep dead letters for a week.
  lookup found "projects/$PROJECT/subscriptions/$DEAD_LETTER" -- gcloud pubsub subscriptions describe "$DEAD_LETTER" \
    "${AT[@]}" --format 'value(name)'
  [ -n "$found" ] || run gcloud pubsub subscriptions create "$DEAD_LETTER" "${AT[@]}" --topic "$DEAD_LETTER" \
    --message-retention-duration 7d --expiration-period never

  step "functions"
  local common=("${FN[@]}" --runtime "$RUNTIME" --source "$SOURCE_DIR" --ignore-file deploy/functions.gcloudignore
    --service-account "$RUNTIME_SA" --build-service-account "projects/$PROJECT/serviceAccounts/$BUILDER_SA"
    --no-allow-unauthenticated --quiet)
  local http=(--trigger-http --timeout "${HTTP_TIMEOUT}s")
  # The task URL and audience are session_task's own URL, known once it exists: a first deploy
  # deploys it once without them, then all three with them.
  lookup uri_task "$(uri_placeholder session_task)" -- gcloud functions describe session_task "${FN[@]}" \
    --format 'value(serviceConfig.uri)'
  if [ -z "$uri_task" ]; then
    render env "$SETTINGS" "$WORK/env-first-pass.json" "$PROJECT"
    run gcloud functions deploy session_task "${common[@]}" --env-vars-file "$WORK/env-first-pass.json" \
      --entry-point session_task "${http[@]}"
    value uri_task "$(uri_placeholder session_task)" -- gcloud functions describe session_task "${FN[@]}" \
      --format 'value(serviceConfig.uri)'
  fi
  render env "$SETTINGS" "$WORK/env.json" "$PROJECT" "SESSION_TASKS_QUEUE=$QUEUE_PATH" "SESSION_TASK_URL=$uri_task" \
    "SESSION_TASK_AUDIENCE=$uri_task" "SESSION_TASKS_SERVICE_ACCOUNT=$TASKS_SA"
  common+=(--env-vars-file "$WORK/env.json")
  run gcloud functions deploy clear_sessions "${common[@]}" --entry-point clear_sessions "${http[@]}"
  run gcloud functions deploy session_task "${common[@]}" --entry-point session_task "${http[@]}"
  run gcloud functions deploy kill_user_sessions "${common[@]}" --entry-point kill_user_sessions \
    --trigger-topic "$TOPIC" --trigger-service-account "$RUNTIME_SA" --retry --timeout "${EVENT_TIMEOUT}s"
  value uri_clear "$(uri_placeholder clear_sessions)" -- gcloud functions describe clear_sessions "${FN[@]}" \
    --format 'value(serviceConfig.uri)'

  step "invokers"   # run.invoker on one function each
  run_retrying gcloud functions add-invoker-policy-binding clear_sessions --region "$REGION" "${AT[@]}" \
    --member "serviceAccount:$SCHEDULER_SA"
  run_retrying gcloud functions add-invoker-policy-binding session_task --region "$REGION" "${AT[@]}" \
    --member "serviceAccount:$TASKS_SA"
  run_retrying gcloud functions add-invoker-policy-binding kill_user_sessions --region "$REGION" "${AT[@]}" \
    --member "serviceAccount:$RUNTIME_SA"

  step "dead letters"   # on the subscription Eventarc made for kill_user_sessions' trigger
  value trigger "projects/$PROJECT/locations/$REGION/triggers/kill-user-sessions-dryrun" -- \
    gcloud functions describe kill_user_sessions "${FN[@]}" --format 'value(eventTrigger.trigger)'
  value subscription "projects/$PROJECT/subscriptions/eventarc-$REGION-kill-user-sessions-dryrun-sub" -- \
    gcloud eventarc triggers describe "$trigger" --location "$REGION" "${AT[@]}" \
    --format 'value(transport.pubsub.subscription)'
  value number 123456789012 -- gcloud projects describe "$PROJECT" --format 'value(projectNumber)'
  local agent="serviceAccount:service-$number@gcp-sa-pubsub.iam.gserviceaccount.com"
  run gcloud pubsub subscriptions update "$subscription" "${AT[@]}" --dead-letter-topic "$DEAD_LETTER" \
    --max-delivery-attempts 10
  run_retrying gcloud pubsub topics add-iam-policy-binding "$DEAD_LETTER" "${AT[@]}" --member "$agent" \
    --role roles/pubsub.publisher
  run_retrying gcloud pubsub subscriptions add-iam-policy-binding "$subscription" "${AT[@]}" --member "$agent" \
    --role roles/pubsub.subscriber

  step "scheduler job"   # OIDC token for clear_sessions' own URL; retries fit within one period
  local job=(--schedule "$SCHEDULE" --time-zone Etc/UTC --uri "$uri_clear" --http-method POST --message-body '{}'
    --oidc-service-account-email "$SCHEDULER_SA" --oidc-token-audience "$uri_clear" --attempt-deadline "${DEADLINE}s"
    --max-retry-attempts 3 --max-retry-duration "${PERIOD}s" --min-backoff 30s --max-backoff "${RETRY_MAX_BACKOFF}s"
    --max-doublings 2)
  lookup found "$JOB" -- gcloud scheduler jobs describe "$JOB" "${IN[@]}" --format 'value(name)'
  if [ -z "$found" ]; then
    run gcloud scheduler jobs create http "$JOB" "${IN[@]}" "${job[@]}" --headers Content-Type=application/json
  else
    run gcloud scheduler jobs update http "$JOB" "${IN[@]}" "${job[@]}" --update-headers Content-Type=application/json
  fi

  if [ "$TTL" = 1 ]; then
    step "TTL policy"   # a backstop behind the cleanup: Datastore deletes past `expires` within a day or so
    for group in "$KIND" session_core-run; do   # the sessions, and the run receipts (kept seven days)
      run gcloud firestore fields ttls update expires --collection-group "$group" --enable-ttl \
        --database "$DATABASE" "${AT[@]}" --async
    done
  fi

  step "log-based metrics"
  for metric in "${METRICS[@]}"; do
    lookup found "$metric" -- gcloud logging metrics describe "$metric" "${AT[@]}" --format 'value(name)'
    [ -n "$found" ] && verb=update || verb=create
    run gcloud logging metrics "$verb" "$metric" "${AT[@]}" --config-from-file "$HERE/metrics/$metric.json"
  done

  step "alert policies"
  local channels=()
  for channel in ${CHANNELS[@]+"${CHANNELS[@]}"}; do channels+=(--channel "$channel"); done
  [ ${#CHANNELS[@]} -gt 0 ] || echo "   note: no --notification-channel: alerts open incidents in the console only"
  for policy in "${POLICIES[@]}"; do
    file="$WORK/alert-$policy.json"
    case "$policy" in
      no-cleanup) render policy "$HERE/alerts/$policy.json" "$file" --duration "$WINDOW" ${channels[@]+"${channels[@]}"} ;;
      failed-runs) render policy "$HERE/alerts/$policy.json" "$file" --alignment "$WINDOW" ${channels[@]+"${channels[@]}"} ;;
      *) render policy "$HERE/alerts/$policy.json" "$file" ${channels[@]+"${channels[@]}"} ;;
    esac
    name="$(render display-name "$file")"
    lookup found "projects/$PROJECT/alertPolicies/dry-run-$policy" -- gcloud alpha monitoring policies list "${AT[@]}" \
      --filter "displayName=\"$name\"" --format 'value(name)'
    [[ "$found" != *$'\n'* ]] || fail "several alert policies are named '$name': delete all but one"
    if [ -z "$found" ]; then
      run gcloud alpha monitoring policies create "${AT[@]}" --policy-from-file "$file"
    else
      run gcloud alpha monitoring policies update "$found" "${AT[@]}" --policy-from-file "$file"
    fi
  done

  step "dashboard"
  name="$(render display-name "$HERE/dashboard.json")"
  lookup found $'projects/'"$PROJECT"$'/dashboards/dry-run\tdry-run-etag' -- gcloud monitoring dashboards list "${AT[@]}" \
    --filter "displayName=\"$name\"" --format 'value(name,etag)'
  [[ "$found" != *$'\n'* ]] || fail "several dashboards are named '$name': delete all but one"
  if [ -z "$found" ]; then
    render dashboard "$HERE/dashboard.json" "$WORK/dashboard.json"
    run gcloud monitoring dashboards create "${AT[@]}" --config-from-file "$WORK/dashboard.json"
  else
    render dashboard "$HERE/dashboard.json" "$WORK/dashboard.json" --etag "${found#*$'\t'}"
    run gcloud monitoring dashboards update "${found%%$'\t'*}" "${AT[@]}" --config-from-file "$WORK/dashboard.json"
  fi

  [ -z "$DRY_RUN" ] || return 0
  echo "deployed: clear_sessions $uri_clear (scheduled '$SCHEDULE' UTC), session_task $uri_task,"
  echo "  kill-user topic $TOPIC (dead letters kept in subscription $DEAD_LETTER), tasks queue $QUEUE_PATH"
  [ -z "$EVENTS_TOPIC" ] || echo "  lifecycle events to projects/$EVENTS_PROJECT/topics/$EVENTS_TOPIC (subscribe your apps to it)"
  echo "check it: gcloud scheduler jobs run $JOB --location $REGION --project $PROJECT"
}

if [ "$DESTROY" = 1 ]; then destroy; else deploy; fi
if [ -n "$DRY_RUN" ]; then
  echo "dry run: nothing was changed; the files gcloud reads are in $WORK"
fi
