#!/usr/bin/python3
"""Run the console blocks of a markdown document and check their output.

A block fenced with ```console holds commands (lines starting with "$ ")
each followed by the exact output it must print (possibly none).  All
commands run in order in one bash process, in the current directory, so
variables and functions carry over.  nbdkit's --filter=snapshot/cbt/
freeze and nbdsnap are mapped to the build tree (as `make install` would
put them).  Exit 0 if every command succeeds and prints what the document
says; otherwise print the differences and exit 1.

usage: run-doc.py DOCUMENT
"""
import os, re, subprocess, sys

doc = open(sys.argv[1]).read()
steps = []                      # (command, expected output lines)
for block in re.findall(r"^```console\n(.*?)^```", doc, re.M | re.S):
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append([line[2:], []])
        elif steps:
            steps[-1][1].append(line.rstrip())
if not steps:
    sys.exit("run-doc: no console blocks in %s" % sys.argv[1])

env = os.environ
prelude = r'''
nbdkit () {
    local a=() x
    for x; do
        case $x in
            --filter=snapshot) a+=("--filter=$SNAPSHOT_FILTER") ;;
            --filter=cbt) a+=("--filter=$CBT_FILTER") ;;
            --filter=freeze) a+=("--filter=$FREEZE_FILTER") ;;
            backup) a+=("$BACKUP_PLUGIN") ;;
            *) a+=("$x") ;;
        esac
    done
    command nbdkit "${a[@]}"
}
nbdsnap () { "$NBDSNAP" "$@"; }
'''
script = prelude
for i, (cmd, _) in enumerate(steps):
    script += "printf '\\n@@@ %d\\n'\n{ %s\n} 2>&1\nprintf '\\n@@@ rc %d %%d\\n' $?\n" % (i, cmd, i)
out = subprocess.run(["bash", "-c", script], stdout=subprocess.PIPE,
                     stdin=subprocess.DEVNULL, timeout=600).stdout.decode()
results = {}
for m in re.finditer(r"\n@@@ (\d+)\n(.*?)\n?\n@@@ rc \1 (\d+)\n", out, re.S):
    results[int(m.group(1))] = (m.group(2), int(m.group(3)))
bad = 0
for i, (cmd, want) in enumerate(steps):
    if i not in results:
        print("run-doc: step %d did not run: $ %s" % (i, cmd)); bad += 1
        break
    got, rc = results[i]
    got_lines = [l.rstrip() for l in got.splitlines()] if got else []
    while want and want[-1] == "":
        want = want[:-1]
    if rc != 0 or got_lines != want:
        bad += 1
        print("run-doc: $ %s" % cmd)
        if rc != 0:
            print("  exit status %d" % rc)
        print("  expected:\n" + "".join("    |%s\n" % l for l in want), end="")
        print("  got:\n" + "".join("    |%s\n" % l for l in got_lines), end="")
print("run-doc: %d commands, %d failed" % (len(steps), bad))
sys.exit(1 if bad else 0)
