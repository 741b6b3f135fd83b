#!/bin/sh
# Every audit event type the code appends is documented in docs/audit.md (as `TYPE`) and in
# schemas/audit-event.schema.json. The types are the string literals of the form
# FAMILY.name in the code that appends events (runtime/sched, runtime/cli, agents); the few
# literals of that form that are not event types are listed below.
set -eu
src=${TROUPE_SOURCE_DIR:?run through meson test}
not_types=' approval.if approval.why mcp.tool mcp.server bus.h mcp.h model.api_key '
missing=0
for type in $(grep -rhoE '"(run|step|agent|mcp|context|policy|approval|bus|child|ask|model)\.[a-z_]+"' \
        "$src/runtime/sched" "$src/runtime/cli" "$src/agents" | tr -d '"' | sort -u); do
    case "$not_types" in *" $type "*) continue ;; esac
    if ! grep -q "\`$type\`" "$src/docs/audit.md"; then
        echo "event type '$type' is appended but not documented in docs/audit.md"
        missing=1
    fi
    if ! grep -q "$type" "$src/schemas/audit-event.schema.json"; then
        echo "event type '$type' is appended but not listed in schemas/audit-event.schema.json"
        missing=1
    fi
done
exit $missing
