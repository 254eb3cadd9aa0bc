#!/bin/sh
# install-tree.sh BIN_DIR OUT: lays out the image's files under OUT, the
# tree deploy/container/Containerfile copies into the runtime image:
#   usr/local/bin/ricochet, usr/local/bin/ricochet-loadgen (when built)
#   usr/local/share/man/man1/ricochet.1 and the bash/zsh/fish completions,
#     written by the binary itself (the paths deploy/systemd's steps use)
#   var/lib/ricochet (0700) and etc/ricochet (0750), empty
# Used by the Containerfile's build stage and by scripts/container-check.sh,
# so both package the same tree.
set -eu
bin_dir=$1
out=$2
install -D -m 0755 "$bin_dir/ricochet" "$out/usr/local/bin/ricochet"
if [ -x "$bin_dir/ricochet-loadgen" ]; then
  install -D -m 0755 "$bin_dir/ricochet-loadgen" "$out/usr/local/bin/ricochet-loadgen"
fi
bin=$out/usr/local/bin/ricochet
install -d -m 0755 "$out/usr/local/share/man/man1" \
  "$out/usr/share/bash-completion/completions" \
  "$out/usr/local/share/zsh/site-functions" \
  "$out/usr/share/fish/vendor_completions.d"
"$bin" man >"$out/usr/local/share/man/man1/ricochet.1"
"$bin" completions bash >"$out/usr/share/bash-completion/completions/ricochet"
"$bin" completions zsh >"$out/usr/local/share/zsh/site-functions/_ricochet"
"$bin" completions fish >"$out/usr/share/fish/vendor_completions.d/ricochet.fish"
install -d -m 0700 "$out/var/lib/ricochet"
install -d -m 0750 "$out/etc/ricochet"
"$bin" --version
