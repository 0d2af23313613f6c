#!/bin/bash -e
# Inside the image: confirm what scripts/install left behind (fails the build otherwise).
/opt/appliance/.venv/bin/appliance --help >/dev/null
/opt/appliance/.venv/bin/appliance check-config --config /etc/appliance/config.toml >/dev/null
id appliance
test "$(readlink /etc/systemd/system/multi-user.target.wants/appliance.service)" = /etc/systemd/system/appliance.service
