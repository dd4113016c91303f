// TokPay's development OpenID Provider: the npm `oidc-provider` package with its
// built-in development login screen (any login, any password). `tokpay serve`
// starts it when no issuer is configured, so login works on a fresh machine.
// The login typed in becomes the subject and a verified email address.
// Never expose it: anyone can sign in as anyone.
import Provider from 'oidc-provider';

const [issuer, clientId, clientSecret, redirectUris] = process.argv.slice(2);
if (!issuer || !clientId || !clientSecret || !redirectUris) {
  console.error('usage: provider.mjs ISSUER CLIENT_ID CLIENT_SECRET REDIRECT_URI[,REDIRECT_URI...]');
  process.exit(2);
}

const configuration = {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: redirectUris.split(','),
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
  features: { devInteractions: { enabled: true } },
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
