# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_iamtokend_global_optspecs
    string join \n socket= config= timeout= server-uid= h/help V/version
end

function __fish_iamtokend_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_iamtokend_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_iamtokend_using_subcommand
    set -l cmd (__fish_iamtokend_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c iamtokend -n "__fish_iamtokend_needs_command" -l socket -d 'The daemon\'s socket (client subcommands)' -r -F
complete -c iamtokend -n "__fish_iamtokend_needs_command" -l config -d 'The main config file' -r -F
complete -c iamtokend -n "__fish_iamtokend_needs_command" -l timeout -d 'How long a client subcommand waits for the daemon\'s answer, in seconds (default 60; `login --timeout` is the wait for the browser instead)' -r
complete -c iamtokend -n "__fish_iamtokend_needs_command" -l server-uid -d 'Also believe a daemon running as this uid (instead of the `iamtokend` user\'s); root and your own uid are always believed' -r
complete -c iamtokend -n "__fish_iamtokend_needs_command" -s h -l help -d 'Print help'
complete -c iamtokend -n "__fish_iamtokend_needs_command" -s V -l version -d 'Print version'
complete -c iamtokend -n "__fish_iamtokend_needs_command" -f -a "serve" -d 'Run the daemon in the foreground'
complete -c iamtokend -n "__fish_iamtokend_needs_command" -f -a "check-config" -d 'Validate the config; print FILE:LINE:COL: message per problem'
complete -c iamtokend -n "__fish_iamtokend_needs_command" -f -a "token" -d 'Print an app\'s access token'
complete -c iamtokend -n "__fish_iamtokend_needs_command" -f -a "credential-process" -d 'Print credential_process JSON for an app with a [role]'
complete -c iamtokend -n "__fish_iamtokend_needs_command" -f -a "exec" -d 'Run CMD with the app\'s AWS credentials from the credentials endpoint; exit with its status'
complete -c iamtokend -n "__fish_iamtokend_needs_command" -f -a "status" -d 'One row per app: state, expiry, next refresh, last error'
complete -c iamtokend -n "__fish_iamtokend_needs_command" -f -a "refresh" -d 'Refresh an app\'s token now and wait for the result'
complete -c iamtokend -n "__fish_iamtokend_needs_command" -f -a "fetch" -d 'Run an app\'s grant once, without a daemon, and print what Identity Center answered'
complete -c iamtokend -n "__fish_iamtokend_needs_command" -f -a "login" -d 'Authorization-code bootstrap with PKCE'
complete -c iamtokend -n "__fish_iamtokend_needs_command" -f -a "completions" -d 'Print a completion script for SHELL on stdout'
complete -c iamtokend -n "__fish_iamtokend_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand serve" -l socket -d 'The daemon\'s socket (client subcommands)' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand serve" -l config -d 'The main config file' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand serve" -l server-uid -d 'Also believe a daemon running as this uid (instead of the `iamtokend` user\'s); root and your own uid are always believed' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand serve" -l dev -d 'Run against a built-in simulated Identity Center with demo apps of every grant'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand serve" -s h -l help -d 'Print help'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand check-config" -l socket -d 'The daemon\'s socket (client subcommands)' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand check-config" -l config -d 'The main config file' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand check-config" -l server-uid -d 'Also believe a daemon running as this uid (instead of the `iamtokend` user\'s); root and your own uid are always believed' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand check-config" -s h -l help -d 'Print help'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand token" -l timeout -d 'How long to wait for the daemon\'s answer, in seconds (default 60)' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand token" -l min-ttl -d 'Refresh first if the cached token has fewer seconds left than this' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand token" -l format -d 'raw: the token and a newline; json: the socket\'s token JSON' -r -f -a "raw\t'The token and a newline'
json\t'The token JSON'"
complete -c iamtokend -n "__fish_iamtokend_using_subcommand token" -l socket -d 'The daemon\'s socket (client subcommands)' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand token" -l config -d 'The main config file' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand token" -l server-uid -d 'Also believe a daemon running as this uid (instead of the `iamtokend` user\'s); root and your own uid are always believed' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand token" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand credential-process" -l timeout -d 'How long to wait for the daemon\'s answer, in seconds (default 60)' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand credential-process" -l socket -d 'The daemon\'s socket (client subcommands)' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand credential-process" -l config -d 'The main config file' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand credential-process" -l server-uid -d 'Also believe a daemon running as this uid (instead of the `iamtokend` user\'s); root and your own uid are always believed' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand credential-process" -s h -l help -d 'Print help'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand exec" -l timeout -d 'How long to wait for the daemon\'s answer, in seconds (default 60)' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand exec" -l socket -d 'The daemon\'s socket (client subcommands)' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand exec" -l config -d 'The main config file' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand exec" -l server-uid -d 'Also believe a daemon running as this uid (instead of the `iamtokend` user\'s); root and your own uid are always believed' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand exec" -s h -l help -d 'Print help'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand status" -l timeout -d 'How long to wait for the daemon\'s answer, in seconds (default 60)' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand status" -l format -d 'Output format' -r -f -a "table\t'Aligned columns'
json\t'The `/v1/apps` JSON'"
complete -c iamtokend -n "__fish_iamtokend_using_subcommand status" -l socket -d 'The daemon\'s socket (client subcommands)' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand status" -l config -d 'The main config file' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand status" -l server-uid -d 'Also believe a daemon running as this uid (instead of the `iamtokend` user\'s); root and your own uid are always believed' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand refresh" -l timeout -d 'How long to wait for the daemon\'s answer, in seconds (default 60)' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand refresh" -l socket -d 'The daemon\'s socket (client subcommands)' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand refresh" -l config -d 'The main config file' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand refresh" -l server-uid -d 'Also believe a daemon running as this uid (instead of the `iamtokend` user\'s); root and your own uid are always believed' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand refresh" -s h -l help -d 'Print help'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand fetch" -l format -d 'Output format' -r -f -a "text\t'`field: value` lines'
json\t'One JSON object with the service\'s member names'
table\t'Aligned columns'"
complete -c iamtokend -n "__fish_iamtokend_using_subcommand fetch" -l socket -d 'The daemon\'s socket (client subcommands)' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand fetch" -l config -d 'The main config file' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand fetch" -l server-uid -d 'Also believe a daemon running as this uid (instead of the `iamtokend` user\'s); root and your own uid are always believed' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand fetch" -l show-secrets -d 'Print tokens in full instead of masked'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand fetch" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand login" -l timeout -d 'How long to wait for the browser\'s redirect, in seconds' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand login" -l socket -d 'The daemon\'s socket (client subcommands)' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand login" -l config -d 'The main config file' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand login" -l server-uid -d 'Also believe a daemon running as this uid (instead of the `iamtokend` user\'s); root and your own uid are always believed' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand login" -l no-browser -d 'Print the URL only; do not open a browser'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand login" -s h -l help -d 'Print help'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand completions" -l socket -d 'The daemon\'s socket (client subcommands)' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand completions" -l config -d 'The main config file' -r -F
complete -c iamtokend -n "__fish_iamtokend_using_subcommand completions" -l server-uid -d 'Also believe a daemon running as this uid (instead of the `iamtokend` user\'s); root and your own uid are always believed' -r
complete -c iamtokend -n "__fish_iamtokend_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand help; and not __fish_seen_subcommand_from serve check-config token credential-process exec status refresh fetch login completions help" -f -a "serve" -d 'Run the daemon in the foreground'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand help; and not __fish_seen_subcommand_from serve check-config token credential-process exec status refresh fetch login completions help" -f -a "check-config" -d 'Validate the config; print FILE:LINE:COL: message per problem'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand help; and not __fish_seen_subcommand_from serve check-config token credential-process exec status refresh fetch login completions help" -f -a "token" -d 'Print an app\'s access token'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand help; and not __fish_seen_subcommand_from serve check-config token credential-process exec status refresh fetch login completions help" -f -a "credential-process" -d 'Print credential_process JSON for an app with a [role]'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand help; and not __fish_seen_subcommand_from serve check-config token credential-process exec status refresh fetch login completions help" -f -a "exec" -d 'Run CMD with the app\'s AWS credentials from the credentials endpoint; exit with its status'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand help; and not __fish_seen_subcommand_from serve check-config token credential-process exec status refresh fetch login completions help" -f -a "status" -d 'One row per app: state, expiry, next refresh, last error'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand help; and not __fish_seen_subcommand_from serve check-config token credential-process exec status refresh fetch login completions help" -f -a "refresh" -d 'Refresh an app\'s token now and wait for the result'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand help; and not __fish_seen_subcommand_from serve check-config token credential-process exec status refresh fetch login completions help" -f -a "fetch" -d 'Run an app\'s grant once, without a daemon, and print what Identity Center answered'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand help; and not __fish_seen_subcommand_from serve check-config token credential-process exec status refresh fetch login completions help" -f -a "login" -d 'Authorization-code bootstrap with PKCE'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand help; and not __fish_seen_subcommand_from serve check-config token credential-process exec status refresh fetch login completions help" -f -a "completions" -d 'Print a completion script for SHELL on stdout'
complete -c iamtokend -n "__fish_iamtokend_using_subcommand help; and not __fish_seen_subcommand_from serve check-config token credential-process exec status refresh fetch login completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
