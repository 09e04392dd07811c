/** The domain of an address, lowercased (everything after the last "@"). */
export function domainOf(address: string): string {
  return address.slice(address.lastIndexOf('@') + 1).toLowerCase();
}
