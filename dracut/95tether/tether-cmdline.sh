#!/bin/sh
# cmdline hook of the tether dracut module: the iSCSI initiator name of this boot, in place
# before iscsid starts. rd.iscsi.initiator= (dracut's option) wins; then a name built into the
# image (hostonly); else a fresh one from iscsi-iname. The iscsi module may have set it already.

if [ ! -e /run/initiatorname.iscsi ]; then
    tether_iname=$(getarg rd.iscsi.initiator -d iscsi_initiator=)
    if [ -z "$tether_iname" ] && ! grep -qs '^InitiatorName=.' /etc/iscsi/initiatorname.iscsi; then
        tether_iname=$(iscsi-iname)
    fi
    if [ -n "$tether_iname" ]; then
        echo "InitiatorName=$tether_iname" >/run/initiatorname.iscsi
        mkdir -p /etc/iscsi
        rm -f /etc/iscsi/initiatorname.iscsi
        ln -s /run/initiatorname.iscsi /etc/iscsi/initiatorname.iscsi
        info "tether: iSCSI initiator name $tether_iname"
    fi
    unset tether_iname
fi
