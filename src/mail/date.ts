/** RFC 5322 date-time in UTC, e.g. "Wed, 25 Nov 2026 12:45:22 +0000" (Received headers, DSNs). */
export function rfc5322Date(date: Date): string {
  return date.toUTCString().replace(/GMT$/, '+0000');
}
