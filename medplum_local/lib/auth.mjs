// OAuth2 client-credentials tokens, as machine clients use them against Medplum.
// The accepted clients are MEDPLUM_CLIENT_ID / MEDPLUM_CLIENT_SECRET and those of MEDPLUM_LOCAL_CLIENTS;
// tokens are opaque random strings kept in memory that expire after MEDPLUM_LOCAL_TOKEN_TTL seconds. The
// token response names the client's project, as Medplum's does.
import { randomBytes, timingSafeEqual } from 'node:crypto';

export class TokenIssuer {
  /**
   * @param {{clients: Map<string, string>, ttlSeconds: number, projectOf: (clientId: string) => string}} options
   *   clients: client id -> secret; projectOf: the id of a client's project
   */
  constructor({ clients, ttlSeconds, projectOf }) {
    this.clients = clients;
    this.projectOf = projectOf;
    this.ttlSeconds = ttlSeconds;
    this.tokens = new Map(); // token -> { clientId, expiresAt }
  }

  /**
   * Handles a token request. `form` is the parsed form body, `authorization` the Authorization header.
   * @returns {{status: number, body: object}}
   */
  issue(form, authorization) {
    let clientId = form.get('client_id') ?? undefined;
    let clientSecret = form.get('client_secret') ?? undefined;
    if (authorization?.startsWith('Basic ')) {
      const decoded = Buffer.from(authorization.slice(6), 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon > 0) {
        clientId = decodeURIComponent(decoded.slice(0, colon));
        clientSecret = decodeURIComponent(decoded.slice(colon + 1));
      }
    }
    const grantType = form.get('grant_type');
    if (grantType !== 'client_credentials') {
      return oauthError(400, 'unsupported_grant_type', 'Unsupported grant_type: ' + (grantType ?? '<missing>'));
    }
    if (!clientId || !clientSecret) {
      return oauthError(400, 'invalid_request', 'Missing client_id or client_secret');
    }
    const expected = this.clients.get(clientId);
    if (expected === undefined || !sameString(clientSecret, expected)) {
      return oauthError(400, 'invalid_client', 'Invalid client credentials');
    }
    this.prune();
    const token = randomBytes(24).toString('base64url');
    this.tokens.set(token, { clientId, expiresAt: Date.now() + this.ttlSeconds * 1000 });
    return {
      status: 200,
      body: {
        access_token: token,
        expires_in: this.ttlSeconds,
        token_type: 'Bearer',
        scope: 'openid',
        project: { reference: `Project/${this.projectOf(clientId)}` },
      },
    };
  }

  /** The client id of a valid, unexpired bearer token in the Authorization header, else undefined. */
  verify(authorization) {
    if (!authorization?.startsWith('Bearer ')) {
      return undefined;
    }
    const entry = this.tokens.get(authorization.slice(7).trim());
    if (!entry || entry.expiresAt <= Date.now()) {
      return undefined;
    }
    return entry.clientId;
  }

  prune() {
    const now = Date.now();
    for (const [token, entry] of this.tokens) {
      if (entry.expiresAt <= now) {
        this.tokens.delete(token);
      }
    }
  }
}

function oauthError(status, error, description) {
  return { status, body: { error, error_description: description } };
}

function sameString(a, b) {
  const left = Buffer.from(String(a));
  const right = Buffer.from(String(b));
  return left.length === right.length && timingSafeEqual(left, right);
}
