#!/usr/bin/env bash
# Test, then deploy, through Cloud Build: two builds of one source archive.
#
#   deploy/build.sh --project P --region R --settings FILE [--schedule CRON]
#                   [--notification-channel NAME] [--dry-run]
#   deploy/build.sh --project P --accounts [--dry-run]   # once: the two build accounts and their roles
#
# The archive is what `gcloud builds submit` would upload (.gcloudignore), packed once. The first
# build (cloudbuild.test.yaml) runs the tests as session-tester, which may only write logs; only
# when it passes does the second (cloudbuild.yaml) deploy that same archive as session-deployer.
# --dry-run packs the archive and prints both commands without submitting them.
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT="" REGION="" SETTINGS="" SCHEDULE="*/15 * * * *" CHANNEL="" DRY_RUN=0 ACCOUNTS=0
# The test build runs third-party code: its account may write the build's logs, and nothing else.
TESTER_ROLES=(logging.logWriter)
# The deploy build runs deploy/deploy.sh: what it creates, and IAM on what it creates.
DEPLOYER_ROLES=(serviceusage.serviceUsageAdmin iam.serviceAccountAdmin resourcemanager.projectIamAdmin
  iam.serviceAccountUser cloudfunctions.admin run.admin cloudtasks.admin pubsub.admin cloudscheduler.admin
  eventarc.viewer datastore.owner logging.configWriter monitoring.editor logging.logWriter)
die() { echo "error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --project) PROJECT="${2:?}"; shift 2 ;;
    --region) REGION="${2:?}"; shift 2 ;;
    --settings) SETTINGS="${2:?}"; shift 2 ;;
    --schedule) SCHEDULE="${2:?}"; shift 2 ;;
    --notification-channel) CHANNEL="${2:?}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --accounts) ACCOUNTS=1; shift ;;
    *) die "unknown argument: $1" ;;
  esac
done
submit() {
  printf "+"; printf " %q" "$@"; echo
  [ "$DRY_RUN" = 1 ] || "$@"
}
[ -n "$PROJECT" ] || die "--project is required"
if [ "$ACCOUNTS" = 1 ]; then
  for name in session-tester session-deployer; do
    email="$name@$PROJECT.iam.gserviceaccount.com"
    [ "$DRY_RUN" = 0 ] && gcloud iam service-accounts describe "$email" --project "$PROJECT" >/dev/null 2>&1 ||
      submit gcloud iam service-accounts create "$name" --project "$PROJECT" --display-name "session_core $name"
    [ "$name" = session-tester ] && roles=("${TESTER_ROLES[@]}") || roles=("${DEPLOYER_ROLES[@]}")
    for role in "${roles[@]}"; do
      submit gcloud projects add-iam-policy-binding "$PROJECT" --member "serviceAccount:$email" --role "roles/$role" \
        --condition None --quiet
    done
  done
  exit 0
fi
[ -n "$REGION" ] && [ -n "$SETTINGS" ] || die "--region and --settings are required"
[ -f "$SETTINGS" ] || die "no settings file $SETTINGS (the one your app loads; see deploy/settings.example.json)"
case "$SETTINGS" in /*|../*) die "--settings $SETTINGS: give a path inside the checkout (the builds read the upload)" ;; esac

archive="$(mktemp -d "${TMPDIR:-/tmp}/session-core-build.XXXXXX")/source.tgz"
gcloud meta list-files-for-upload . | LC_ALL=C sort | tar -czf "$archive" --no-recursion -T -
grep -qx "${SETTINGS#./}" < <(tar -tzf "$archive") || die "$SETTINGS is not in the upload (.gcloudignore leaves it out)"
digest="$(sha256sum "$archive" | cut -d' ' -f1)"
echo "source archive $archive sha256 $digest"

submit gcloud builds submit "$archive" --project "$PROJECT" --region "$REGION" --config cloudbuild.test.yaml
submit gcloud builds submit "$archive" --project "$PROJECT" --region "$REGION" --config cloudbuild.yaml \
  --substitutions "^~^_REGION=$REGION~_SETTINGS=$SETTINGS~_SCHEDULE=$SCHEDULE~_NOTIFICATION_CHANNEL=$CHANNEL~_SOURCE_SHA256=$digest"
