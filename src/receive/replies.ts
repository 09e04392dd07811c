/** An SMTP refusal with its enhanced status code (RFC 3463), passed to smtp-server's callbacks. */
export class SmtpReply extends Error {
  constructor(
    readonly responseCode: number,
    readonly enhancedCode: string,
    text: string,
  ) {
    super(`${enhancedCode} ${text}`);
  }
}
