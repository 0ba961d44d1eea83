# bash completion for nbdsnap(1): subcommands, their verbs and options,
# backup point names read from the repository, files and directories.
# Installed as $(bashcompletiondir)/nbdsnap; needs only bash itself.

# _nbdsnap_points REPO: the point names of a repository (none if REPO is
# not one).
_nbdsnap_points ()
{
    [ -d "$1" ] || return 0
    command nbdsnap list "$1" 2>/dev/null | awk 'NR > 1 { print $1 }'
}

_nbdsnap ()
{
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local i w cmd= cmdi=0 args=() opts
    COMPREPLY=()

    # The subcommand, and the positional words typed after it.
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if [ -z "$cmd" ]; then
            case $w in
                -*) ;;
                *) cmd=$w; cmdi=$i ;;
            esac
        else
            case $w in
                --since|--name|--connections|--threads|--block-size|-o|--output)
                    ((i++)) ;;
                -*) ;;
                *) args+=("$w") ;;
            esac
        fi
    done

    if [ -z "$cmd" ]; then
        case $cur in
            -*) COMPREPLY=($(compgen -W '--json -v --verbose --help --version' -- "$cur")) ;;
            *)  COMPREPLY=($(compgen -W 'backup restore verify list delete merge init
                                         snapshot checkpoint freeze' -- "$cur")) ;;
        esac
        return 0
    fi

    # Option arguments.
    case $prev in
        -o|--output)
            compopt -o filenames 2>/dev/null || true
            COMPREPLY=($(compgen -f -- "$cur")); return 0 ;;
        --since)
            [ "$cmd" = backup ] && [ ${#args[@]} -ge 2 ] &&
                COMPREPLY=($(compgen -W "$(_nbdsnap_points "${args[1]}")" -- "$cur"))
            return 0 ;;
        --name|--connections|--threads|--block-size)
            return 0 ;;
    esac

    case $cmd in
        backup)  opts='--full --incremental --since --name --compress
                       --connections --block-size --progress --no-progress
                       --json -v' ;;
        restore) opts='-o --output --connections --progress --no-progress
                       --json -v' ;;
        init)    opts='--block-size --json -v' ;;
        snapshot|checkpoint|freeze) opts='--force --json -v' ;;
        *)       opts='--json -v' ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return 0
    fi

    local n=${#args[@]}
    case $cmd in
        snapshot|checkpoint|freeze)
            if [ "$n" -eq 0 ]; then
                case $cmd in
                    snapshot)   w='create revert delete list diff' ;;
                    checkpoint) w='create delete list diff' ;;
                    freeze)     w='begin end list' ;;
                esac
                COMPREPLY=($(compgen -W "$w" -- "$cur"))
            elif [ "$n" -eq 1 ]; then
                COMPREPLY=($(compgen -W 'nbd+unix:///?socket= nbd:// nbds://' -- "$cur"))
                compopt -o nospace 2>/dev/null || true
            fi ;;
        backup)
            if [ "$n" -eq 0 ]; then       # URI
                COMPREPLY=($(compgen -W 'nbd+unix:///?socket= nbd:// nbds://' -- "$cur"))
                compopt -o nospace 2>/dev/null || true
            elif [ "$n" -eq 1 ]; then     # REPO
                compopt -o filenames 2>/dev/null || true
                COMPREPLY=($(compgen -d -- "$cur"))
            fi ;;
        restore|verify|delete|merge)
            if [ "$n" -eq 0 ]; then       # REPO
                compopt -o filenames 2>/dev/null || true
                COMPREPLY=($(compgen -d -- "$cur"))
            elif [ "$n" -eq 1 ]; then     # POINT
                COMPREPLY=($(compgen -W "$(_nbdsnap_points "${args[0]}")" -- "$cur"))
            fi ;;
        list|init)
            if [ "$n" -eq 0 ]; then
                compopt -o filenames 2>/dev/null || true
                COMPREPLY=($(compgen -d -- "$cur"))
            fi ;;
    esac
    return 0
}
complete -F _nbdsnap nbdsnap
