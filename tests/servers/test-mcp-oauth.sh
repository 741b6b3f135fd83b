#!/bin/sh
# The OAuth fixture (test-mcp-oauth) itself, with curl: its metadata, each grant, PKCE, refresh
# rotation, bearer checks on /mcp, sessions (400/404, expiry), token expiry, a restart on the
# same port keeping tokens and effect counts (--state), and --log.
set -eu
build=${TROUPE_BUILD_DIR:?run through meson test}
fixture=$build/tests/test-mcp-oauth
tmp=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
# expect WHAT HAYSTACK NEEDLE
expect() {
    case "$2" in *"$3"*) ;; *) fail "$1: expected '$3' in: $2" ;; esac
}

start() {
    : >"$tmp/url"
    "$fixture" --port "$1" --client-id cc --client-secret 's3cr:t' --token-ttl 3 \
        --session-ttl 3 --state "$tmp/state.db" --log "$tmp/log" >"$tmp/url" &
    pid=$!
    for _ in $(seq 100); do
        [ -s "$tmp/url" ] && break
        sleep 0.05
    done
    url=$(cat "$tmp/url")
    [ -n "$url" ] || fail "the fixture printed no URL"
    base=${url%/mcp}
}

# curl with the response's status line and headers, then the body
req() {
    curl -s -i "$@"
}

rpc() { # TOKEN SESSION BODY
    req -X POST "$url" -H 'Content-Type: application/json' \
        -H 'Accept: application/json, text/event-stream' \
        ${1:+-H "Authorization: Bearer $1"} ${2:+-H "Mcp-Session-Id: $2"} -d "$3"
}

token_of() { sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p'; }
refresh_of() { sed -n 's/.*"refresh_token":"\([^"]*\)".*/\1/p'; }
session_of() { tr -d '\r' | sed -n 's/^[Mm]cp-[Ss]ession-[Ii]d: //p'; }

start 0
port=${base##*:}

# Without a token: 401 pointing at the protected resource metadata.
out=$(rpc "" "" '{"jsonrpc":"2.0","id":1,"method":"ping"}')
expect "no token" "$out" "HTTP/1.1 401"
expect "no token" "$out" "WWW-Authenticate: Bearer resource_metadata=\"$base/.well-known/oauth-protected-resource/mcp\""

out=$(req "$base/.well-known/oauth-protected-resource/mcp")
expect "PRM" "$out" "\"resource\":\"$url\""
expect "PRM" "$out" "\"authorization_servers\":[\"$base\"]"
out=$(req "$base/.well-known/oauth-authorization-server")
expect "AS metadata" "$out" "\"issuer\":\"$base\""
expect "AS metadata" "$out" "\"token_endpoint\":\"$base/token\""
expect "AS metadata" "$out" "\"registration_endpoint\":\"$base/register\""
expect "AS metadata" "$out" "\"code_challenge_methods_supported\":[\"S256\"]"
expect "AS metadata" "$out" "client_secret_post"

# Client credentials: basic (the secret has a colon: form-encoded), post, a wrong secret.
out=$(req -u 'cc:s3cr%3At' -d grant_type=client_credentials "$base/token")
expect "basic" "$out" '"token_type":"Bearer"'
token=$(printf '%s' "$out" | token_of)
[ -n "$token" ] || fail "no access token from client_secret_basic"
out=$(req -d grant_type=client_credentials -d client_id=cc --data-urlencode 'client_secret=s3cr:t' \
    "$base/token")
[ -n "$(printf '%s' "$out" | token_of)" ] || fail "no access token from client_secret_post: $out"
out=$(req -u 'cc:wrong' -d grant_type=client_credentials "$base/token")
expect "wrong secret" "$out" "HTTP/1.1 401"
expect "wrong secret" "$out" '"error":"invalid_client"'

# The handshake era: a session; effects counted per key.
out=$(rpc "$token" "" '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"sh","version":"1"}}}')
expect "initialize" "$out" "HTTP/1.1 200"
session=$(printf '%s' "$out" | session_of)
[ -n "$session" ] || fail "no Mcp-Session-Id: $out"
call='{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"effect","arguments":{},"_meta":{"io.troupe/idempotency-key":"k1","traceparent":"00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"}}}'
out=$(rpc "$token" "$session" "$call")
expect "effect" "$out" '\"count\":1'
out=$(rpc "$token" "$session" "$call")
expect "effect again" "$out" '\"count\":2'
out=$(rpc "$token" "" "$call")
expect "no session" "$out" "HTTP/1.1 400"
out=$(rpc "$token" "bogus" "$call")
expect "unknown session" "$out" "HTTP/1.1 404"
out=$(rpc "" "$session" "$call")
expect "session but no token" "$out" "HTTP/1.1 401"
out=$(rpc "not-a-token" "$session" "$call")
expect "bad token" "$out" 'error="invalid_token"'

# The modern era: no session needed.
out=$(rpc "$token" "" '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}')
expect "modern echo" "$out" '"text":"hi"'

# Dynamic registration, authorization code with PKCE, refresh.
out=$(req -H 'Content-Type: application/json' -d '{"redirect_uris":["http://127.0.0.1:9/cb"],"token_endpoint_auth_method":"none","client_name":"t"}' "$base/register")
expect "register" "$out" "HTTP/1.1 201"
client=$(printf '%s' "$out" | sed -n 's/.*"client_id":"\([^"]*\)".*/\1/p')
case "$out" in *client_secret*) fail "a public client got a secret: $out" ;; esac
verifier=the-verifier-of-this-test-is-long-enough-for-rfc-7636
challenge=$(printf %s "$verifier" | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '=')
authorize() {
    req -G "$base/authorize" -d response_type=code -d "client_id=$client" \
        --data-urlencode redirect_uri=http://127.0.0.1:9/cb -d code_challenge=$challenge \
        -d code_challenge_method=S256 -d state=xyz -d scope=mcp
}
out=$(authorize)
expect "authorize" "$out" "HTTP/1.1 302"
expect "authorize" "$out" "Location: http://127.0.0.1:9/cb?code="
expect "authorize" "$out" "&state=xyz&iss=http%3A%2F%2F127.0.0.1%3A$port"
code=$(printf '%s' "$out" | tr -d '\r' | sed -n 's/^Location: .*code=\([^&]*\)&.*/\1/p')
out=$(req -d grant_type=authorization_code -d "client_id=$client" -d "code=$code" \
    -d redirect_uri=http://127.0.0.1:9/cb -d code_verifier=wrong-verifier "$base/token")
expect "wrong verifier" "$out" '"error":"invalid_grant"'
code=$(authorize | tr -d '\r' | sed -n 's/^Location: .*code=\([^&]*\)&.*/\1/p')
out=$(req -d grant_type=authorization_code -d "client_id=$client" -d "code=$code" \
    -d redirect_uri=http://127.0.0.1:9/cb -d code_verifier=$verifier "$base/token")
refresh=$(printf '%s' "$out" | refresh_of)
[ -n "$refresh" ] || fail "no refresh token: $out"
out=$(req -d grant_type=authorization_code -d "client_id=$client" -d "code=$code" \
    -d redirect_uri=http://127.0.0.1:9/cb -d code_verifier=$verifier "$base/token")
expect "code reused" "$out" '"error":"invalid_grant"'
out=$(req -d grant_type=refresh_token -d "client_id=$client" -d "refresh_token=$refresh" \
    "$base/token")
[ -n "$(printf '%s' "$out" | refresh_of)" ] || fail "refresh gave no new refresh token: $out"
out=$(req -d grant_type=refresh_token -d "client_id=$client" -d "refresh_token=$refresh" \
    "$base/token")
expect "refresh token reused" "$out" '"error":"invalid_grant"'

# A restart on the same port: a token issued before it still works, the session is gone,
# counts are kept.
token=$(req -u 'cc:s3cr%3At' -d grant_type=client_credentials "$base/token" | token_of)
kill "$pid"
wait "$pid" || true
start "$port"
[ "$url" = "http://127.0.0.1:$port/mcp" ] || fail "restarted on another URL: $url"
out=$(rpc "$token" "$session" "$call")
expect "session after restart" "$out" "HTTP/1.1 404"
out=$(rpc "$token" "" '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"sh","version":"1"}}}')
session=$(printf '%s' "$out" | session_of)
out=$(rpc "$token" "$session" "$call")
expect "effect after restart" "$out" '\"count\":3'
[ "$(sqlite3 "$tmp/state.db" "SELECT count || ' ' || traceparent FROM effects WHERE key = 'k1'")" \
    = "3 00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01" ] || fail "effects table"

# Expiry: the session, then the token (both 3 s).
sleep 3.2
out=$(rpc "$token" "$session" "$call")
expect "expired token" "$out" 'error="invalid_token"'
token=$(req -u 'cc:s3cr%3At' -d grant_type=client_credentials "$base/token" | token_of)
out=$(rpc "$token" "$session" "$call")
expect "expired session" "$out" "HTTP/1.1 404"

grep -q "^POST /mcp Authorization: Bearer $token\$" "$tmp/log" || fail "the log lacks the token"
grep -q "^POST /token Authorization: Basic " "$tmp/log" || fail "the log lacks /token's Basic"
echo "ok"
