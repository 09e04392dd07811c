/** The CLI's exit codes, from sysexits.h: one place, named. */
export const EX_USAGE = 64;
/** import-legacy: the old config file is not usable. */
export const EX_DATAERR = 65;
/** The runtime cannot run the daemon (Node.js too old). */
export const EX_UNAVAILABLE = 69;
/** Something is left to try later: a source kept old data or held removals, flush left messages. */
export const EX_TEMPFAIL = 75;
/** The config is wrong: the message names file, line and key. */
export const EX_CONFIG = 78;
