#!/bin/sh
# --expose-gc: the receiver collects young garbage while a large message streams in.
exec /usr/bin/node --expose-gc /usr/lib/alternc-secondarymx/dist/cli.js "$@"
