#!/usr/bin/env bash
# Builds alternc-secondarymx_<version>_all.deb from the built code (npm run build) and the
# production dependencies already in node_modules (no network): `npm run deb [OUTDIR]`.
# dpkg-deb rather than dpkg-buildpackage: the package is the npm build plus its
# pure-JavaScript dependencies, arch "all"; debhelper would add a build that runs npm
# under its own environment and nothing this needs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$(cd "${1:-$root}" && pwd)"
version="$(node -p "require('$root/package.json').version")"
package=alternc-secondarymx
deb="$out/${package}_${version}_all.deb"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"

lib="$stage/usr/lib/$package"
install -d "$lib" "$stage/usr/bin" "$stage/usr/lib/systemd/system" "$stage/etc/secondarymx" \
  "$stage/usr/share/man/man8" "$stage/usr/share/doc/$package" "$stage/DEBIAN"

# The code and its production dependencies (npm's own list: what `npm ci --omit=dev` installs).
cp -r "$root/dist" "$lib/dist"
find "$lib/dist" -name '*.map' -delete # they point at src/, which is not shipped
sed -i '1{/^#!/d}' "$lib/dist/cli.js"  # run by /usr/bin/secondarymx, not as a script
node -e "const p=require('$root/package.json'); delete p.devDependencies; delete p.scripts; delete p.mocha; require('fs').writeFileSync('$lib/package.json', JSON.stringify(p, null, 2) + '\n')"
(cd "$root" && npm ls --omit=dev --all --parseable 2>/dev/null) | tail -n +2 | while read -r dir; do
  rel="${dir#"$root"/}"
  [ -d "$lib/$rel" ] && continue
  install -d "$lib/$(dirname "$rel")"
  cp -r "$dir" "$lib/$rel"
done
# Nothing a user runs from the dependencies: their test suites, sources maps and bins stay out.
# Nor their TypeScript declarations and sources (node runs the .js next to them).
find "$lib/node_modules" \( -name '*.map' -o -name '*.md' -o -name '*.html' -o -name '*.ts' -o -name '*.cts' -o -name '*.mts' -o -name '*.tsbuildinfo' \
  -o -name '.npmignore' -o -name '.prettierignore' -o -name '.gitattributes' -o -name '.eslintrc*' -o -name '*.yml' \
  -o -name '.github' -o -name '.husky' -o -name '.bin' -o \( -type d -name test \) \) -prune -exec rm -rf {} +
find "$lib" -type f -exec chmod 0644 {} + && find "$lib" -type d -exec chmod 0755 {} +
# Their command-line scripts (#! on the first line) stay executable, as npm installs them.
find "$lib/node_modules" -type f -print0 | perl -0ne 'chomp; open(my $f, "<", $_) or next; read($f, my $head, 2); chmod(0755, $_) if $head eq "#!"'

install -m 0755 "$here/secondarymx.sh" "$stage/usr/bin/secondarymx"
sed 's#^ExecStart=/usr/bin/env secondarymx #ExecStart=/usr/bin/secondarymx #' "$root/deploy/secondarymx.service" >"$stage/usr/lib/systemd/system/secondarymx.service"
chmod 0644 "$stage/usr/lib/systemd/system/secondarymx.service"
install -m 0644 "$here/secondarymx.yaml" "$stage/etc/secondarymx/secondarymx.yaml"
install -m 0644 "$here/domains.txt" "$stage/etc/secondarymx/domains.txt"

# The man page: the same text as --help.
node --import tsx "$here/manpage.ts" "$version" "$(node "$root/dist/cli.js" --help)" | gzip -9n >"$stage/usr/share/man/man8/secondarymx.8.gz"
install -m 0644 "$here/copyright" "$stage/usr/share/doc/$package/copyright"
printf '%s (%s) unstable; urgency=medium\n\n  * Package built from the repository (npm run deb).\n\n -- alternc-secondarymx developers <secondarymx@alternc.example>  %s\n' \
  "$package" "$version" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}")" | gzip -9n >"$stage/usr/share/doc/$package/changelog.gz"
install -m 0644 "$root/config/secondarymx.example.yaml" "$stage/usr/share/doc/$package/secondarymx.example.yaml"

for script in postinst prerm postrm; do install -m 0755 "$here/$script" "$stage/DEBIAN/$script"; done
printf '/etc/secondarymx/secondarymx.yaml\n/etc/secondarymx/domains.txt\n' >"$stage/DEBIAN/conffiles"
size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" "$here/control" >"$stage/DEBIAN/control"

# xz -1: 3 MB instead of 2 MB, in 0.4 s of CPU instead of 5 (the package test builds it on every run)
dpkg-deb --root-owner-group -Zxz -z1 --build "$stage" "$deb" >/dev/null
echo "$deb"
