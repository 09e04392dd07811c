/** The domain of an address, lowercased (everything after the last "@"). */
export function domainOf(address: string): string {
  return address.slice(address.lastIndexOf('@') + 1).toLowerCase();
}

/** Whether a text is ASCII only: an address that is not needs SMTPUTF8 (RFC 6531). */
export function isAscii(text: string): boolean {
  return !/[^\x00-\x7f]/.test(text);
}
