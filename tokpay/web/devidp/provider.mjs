// TokPay's development OpenID Provider: the npm `oidc-provider` package with its
// built-in development login screen (any login, any password). `tokpay serve`
// starts it when no issuer is configured, so login works on a fresh machine.
// The login typed in becomes the subject and a verified email address.
// Never expose it: anyone can sign in as anyone. It listens on 127.0.0.1 only.
//
// The client secret comes from the environment (TOKPAY_DEVIDP_CLIENT_SECRET), never
// the command line, which every local user can read in the process list.
import Provider from 'oidc-provider';

const [issuer, clientId, redirectUris, postLogoutUris] = process.argv.slice(2);
const clientSecret = process.env.TOKPAY_DEVIDP_CLIENT_SECRET;
if (!issuer || !clientId || !redirectUris || !postLogoutUris || !clientSecret) {
  console.error(
    'usage: TOKPAY_DEVIDP_CLIENT_SECRET=... provider.mjs ISSUER CLIENT_ID ' +
      'REDIRECT_URI[,...] POST_LOGOUT_REDIRECT_URI[,...]',
  );
  process.exit(2);
}
delete process.env.TOKPAY_DEVIDP_CLIENT_SECRET;

const configuration = {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: redirectUris.split(','),
      post_logout_redirect_uris: postLogoutUris.split(','),
      grant_types: ['authorization_code'],
      response_types: ['code'],
    },
  ],
  // PKCE (S256) for every client, confidential ones too.
  pkce: { required: () => true },
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  async findAccount(ctx, id) {
    const email = String(id).trim().toLowerCase();
    return {
      accountId: email,
      async claims() {
        return { sub: email, email, email_verified: true };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    // RP-initiated logout ends this provider's session, so the next login asks
    // again. The confirmation is sent at once (the relying party asked for it with
    // an id_token_hint); without JavaScript a button does it.
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        const confirmed = form.replace('</form>', '<input type="hidden" name="logout" value="yes"></form>');
        ctx.body = `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>Signing out</title></head><body>
<p>Signing you out of the development provider...</p>${confirmed}
<button type="submit" form="op.logoutForm">Sign out</button>
<script>document.getElementById('op.logoutForm').submit();</script>
</body></html>`;
      },
    },
  },
  cookies: { keys: [clientSecret] },
};

const provider = new Provider(issuer, configuration);
const port = Number(new URL(issuer).port);
provider.listen(port, '127.0.0.1', () => {
  console.log(`dev OIDC provider ready at ${issuer}`);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}
