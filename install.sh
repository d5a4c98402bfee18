#!/bin/sh
# smsgw installer for Termux:  curl -fsSL <URL of this file> | sh
#
# Installs python, pip and termux-api with pkg (what is missing), smsgw with pip, the
# Termux:Boot script, the runit service (disabled until `sv-enable smsgw`), the
# Termux:Tasker hook and the watchdog (a termux-job-scheduler job, id 7674). Running it
# again changes nothing; files you edited are kept (the new version is put beside them as
# *.new), but the watchdog job is scheduled again (the same job, replaced).
#
# Environment:
#   SMSGW_SOURCE  what pip installs (default: the project's published archive)
#   SMSGW_PREFIX  install into this prefix instead of Termux's (for testing elsewhere)
set -eu

# Everything runs from main(), called on the last line: a download cut short by
# `curl | sh` runs nothing at all.
main() {

    SMSGW_SOURCE="${SMSGW_SOURCE:-https://github.com/smsgw-project/smsgw/archive/refs/heads/main.tar.gz}"
    TERMUX_PREFIX=/data/data/com.termux/files/usr

    say() { printf '%s\n' "smsgw-install: $*"; }
    die() { printf '%s\n' "smsgw-install: error: $*" >&2; exit 1; }

    if [ -n "${SMSGW_PREFIX:-}" ]; then
        PREFIX="$SMSGW_PREFIX"
    elif [ -n "${TERMUX_VERSION:-}" ] || [ -d "$TERMUX_PREFIX" ]; then
        PREFIX="${PREFIX:-$TERMUX_PREFIX}"
    else
        die "this is not Termux. smsgw runs inside Termux on Android (install Termux from F-Droid).
On a computer, try it with: pip install '$SMSGW_SOURCE' && smsgw demo
(set SMSGW_PREFIX to install into a test prefix anyway)"
    fi
    [ -n "${HOME:-}" ] || die "HOME is not set"
    PATH="$PREFIX/bin:$PATH"
    export PATH PREFIX

    # 1. Packages ---------------------------------------------------------------------
    need=""
    command -v python >/dev/null 2>&1 || need="$need python"
    python -m pip --version >/dev/null 2>&1 || need="$need python-pip"
    command -v termux-sms-send >/dev/null 2>&1 || need="$need termux-api"
    if [ -n "$need" ]; then
        say "installing packages:$need"
        # shellcheck disable=SC2086
        pkg install -y $need </dev/null || die "pkg install$need failed; run 'pkg update' and try again"
    else
        say "python, pip and termux-api are already installed"
    fi

    # 2. smsgw itself -------------------------------------------------------------------
    say "installing smsgw from $SMSGW_SOURCE"
    python -m pip install --quiet --disable-pip-version-check "$SMSGW_SOURCE" </dev/null \
        || die "pip could not install smsgw from $SMSGW_SOURCE"
    command -v smsgw >/dev/null 2>&1 || die "smsgw was installed but is not on PATH ($PREFIX/bin)"

    # 3. Scripts, from the installed package: never clobber what the user changed -----------
    share="$(python -c 'import sys; print(sys.prefix)')/share/smsgw/termux"
    [ -f "$share/boot/smsgw" ] || die "the smsgw package has no Termux scripts in $share"

    # put_file SRC DEST: install, or leave alone when identical, or put beside as DEST.new.
    put_file() {
        src="$1"; dest="$2"
        mkdir -p "$(dirname "$dest")"
        if [ ! -e "$dest" ]; then
            cp "$src" "$dest"; chmod 700 "$dest"; say "installed $dest"
        elif ! cmp -s "$src" "$dest"; then
            cp "$src" "$dest.new"; chmod 700 "$dest.new"
            say "kept your $dest; the new version is in $dest.new"
        fi
    }

    put_file "$share/boot/smsgw" "$HOME/.termux/boot/smsgw"
    put_file "$share/tasker/smsgw-sms-received" "$HOME/.termux/tasker/smsgw-sms-received"
    put_file "$share/watchdog/smsgw-watchdog" "$HOME/.termux/watchdog/smsgw-watchdog"

    service="$PREFIX/var/service/smsgw"
    first_service_install=0
    [ -d "$service" ] || first_service_install=1
    put_file "$share/service/smsgw/run" "$service/run"
    mkdir -p "$service/log"
    if [ ! -e "$service/log/run" ] && [ ! -L "$service/log/run" ]; then
        ln -s "$PREFIX/share/termux-services/svlogger" "$service/log/run"
    fi
    if [ "$first_service_install" = 1 ]; then
        : >"$service/down"  # disabled until the user runs sv-enable smsgw
    fi

    # 4. The watchdog: a persisted job about every 15 to 30 minutes (900000 ms is Android's
    # shortest period; the flex window may add as much again) that starts smsgw if it died.
    # Scheduled on every run: a listed job is no proof that it runs (a job made by an older
    # Termux:API names a service class that no longer exists), and a fixed job id replaces
    # it, never adds one. Constraints given explicitly: left out, Termux:API waits for a low
    # battery to pass and for validated internet (--network any still needs a network that
    # reaches the internet; `--network none` makes Termux:API unable to list its jobs).
    watchdog="$HOME/.termux/watchdog/smsgw-watchdog"
    job="termux-job-scheduler --job-id 7674 --script $watchdog --period-ms 900000 --persisted true --battery-not-low false --network any"
    # termux-api commands wait for ever without the Termux:API app: a timeout. Termux:API
    # 0.51 and older print `Scheduling Job ...` (tab-separated) and not always the rest.
    if timeout 30 termux-job-scheduler --job-id 7674 --script "$watchdog" --period-ms 900000 \
            --persisted true --battery-not-low false --network any </dev/null 2>&1 \
            | grep -q -e "^Pending Job 7674:" -e "^Scheduling Job 7674: .* - response 1"; then
        say "registered the watchdog (termux-job-scheduler job 7674, about every 15 to 30 minutes)"
        say "  exempt Termux:API (and Termux) from battery optimisation, or Android may run it hours late"
    else
        say "could not register the watchdog (is the Termux:API app installed?); later, run:"
        say "  $job"
    fi

    # 5. Next steps ------------------------------------------------------------------------
    cat <<EOF

smsgw is installed. Next steps:
  1. Install the Termux:API and Termux:Boot apps from F-Droid (same source as Termux),
     and open Termux:Boot once so it may run at boot. In Android's settings, exempt
     Termux and Termux:API from battery optimisation (or the watchdog job may run late).
  2. smsgw doctor                         # checks permissions, apps, boot script
  3. smsgw config --url 'https://user:pass@example.org/smsgateway/'
  4. pkg install termux-services          # if not yet installed; restart Termux after
     sv-enable smsgw                      # run now and at every boot
  5. smsgw status                         # is it healthy?
EOF
}

main "$@"
