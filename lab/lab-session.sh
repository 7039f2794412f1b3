#!/bin/bash
# The lab node's sshd ForceCommand: log each remote command, then run it as sshd would.
# Installed as /usr/local/sbin/lab-session in the node tree by lab/lab-up.sh.
# /var/log/ssh-commands.log gets one line per SSH command: `<time> <pid> <command>`.
cmd=${SSH_ORIGINAL_COMMAND:-}
line=${cmd:-<login shell>}
line=${line//$'\n'/\\n}
printf '%s %s %s\n' "$(date +%Y-%m-%dT%H:%M:%S%z)" "$$" "${line//$'\r'/}" >>/var/log/ssh-commands.log
if [[ -z $cmd ]]; then
  exec -l /bin/bash
fi
case $cmd in
  internal-sftp | */sftp-server) exec /usr/lib/openssh/sftp-server ;;
esac
exec /bin/bash -c "$cmd"
