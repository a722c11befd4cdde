-- Sessions of the web console (issue 18). A session is what signing in with a provisioning
-- key (an account holder) or an operator key (the operator) gives: the browser holds a
-- random token in an HttpOnly cookie, the table only its SHA-256, never the key itself.
-- key_id / operator_key_id name the key signed in with: revoking or deleting that key ends
-- its sessions at once. csrf_token is the token every form of the session must post back.
CREATE TABLE console_sessions (
    token_hash       TEXT    PRIMARY KEY,
    account_id       INTEGER,
    key_id           INTEGER,
    operator_key_id  INTEGER,
    csrf_token       TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL
);

CREATE INDEX console_sessions_expiry ON console_sessions(expires_at);
