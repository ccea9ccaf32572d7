using Vmm.Virtio.Spec;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

public sealed partial class VhostUserFrontendConnection
{
    /// <summary>
    /// The handshake, in the order strict back-ends (rust-vmm's) need: nothing gated by a protocol
    /// feature is sent before SET_PROTOCOL_FEATURES acked it (vhost-user.rst,
    /// "Protocol features" and "Multiple queue support").
    /// </summary>
    public async Task<VhostUserBackendInfo> HandshakeAsync(CancellationToken cancellationToken = default)
    {
        // 1. GET_FEATURES: the back-end's virtio feature bits. vhost-user drives virtio 1.x devices
        //    only; without VERSION_1 the rings would be legacy (guest-endian) and we speak none of that.
        ulong features = await GetU64Async(VhostUserRequest.GET_FEATURES, cancellationToken).ConfigureAwait(false);
        if ((features & VirtioFeatures.VERSION_1) == 0)
        {
            throw new VhostUserIncompatibleBackendException(
                $"The vhost-user back-end offers no VERSION_1 (features 0x{features:x}), so it cannot drive a virtio 1.x device.");
        }

        BackendFeatures = features;

        // 2. GET_PROTOCOL_FEATURES + SET_PROTOCOL_FEATURES, only when the back-end offers
        //    VHOST_USER_F_PROTOCOL_FEATURES (bit 30). Acked: offered ∩ what we implement, never
        //    bits ≥ 20 (their meaning differs between implementations). REPLY_ACK is not yet in
        //    force for SET_PROTOCOL_FEATURES itself.
        if ((features & VhostUserVirtioFeatures.PROTOCOL_FEATURES) != 0)
        {
            var offered = (VhostUserProtocolFeatures)await GetU64Async(VhostUserRequest.GET_PROTOCOL_FEATURES, cancellationToken)
                .ConfigureAwait(false);
            OfferedProtocolFeatures = offered;
            VhostUserProtocolFeatures acked = VhostUserProtocolFeatureMask.Negotiate(
                offered, _options.ProtocolFeatures & SupportedProtocolFeatures);
            await SendAsync(VhostUserRequest.SET_PROTOCOL_FEATURES, U64((ulong)acked), needReply: false, cancellationToken: cancellationToken)
                .ConfigureAwait(false);
            ProtocolFeatures = acked;
        }

        // 3. SET_OWNER: this front-end owns the session.
        await SendAsync(VhostUserRequest.SET_OWNER, cancellationToken: cancellationToken).ConfigureAwait(false);

        // 4. GET_QUEUE_NUM, only with MQ acked ("Multiple queue support").
        int? queueCount = null;
        if (HasProtocolFeature(VhostUserProtocolFeatures.MQ))
        {
            ulong n = await GetU64Async(VhostUserRequest.GET_QUEUE_NUM, cancellationToken).ConfigureAwait(false);
            queueCount = n is 0 or > ushort.MaxValue
                ? throw new VhostUserProtocolException($"GET_QUEUE_NUM answered {n} queues.")
                : (int)n;
        }

        // 5. GET_MAX_MEM_SLOTS, only with CONFIGURE_MEM_SLOTS acked.
        ulong? maxMemSlots = null;
        if (HasProtocolFeature(VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS))
        {
            maxMemSlots = await GetU64Async(VhostUserRequest.GET_MAX_MEM_SLOTS, cancellationToken).ConfigureAwait(false);
            if (maxMemSlots == 0)
            {
                // No slot holds no guest memory: no ring could ever run. Refused here, at the
                // handshake, rather than at the first ring start.
                throw new VhostUserIncompatibleBackendException("GET_MAX_MEM_SLOTS answered 0 memory slots.");
            }
        }

        // 6. GET_CONFIG, only with CONFIG acked; cached for the guest's config reads. An empty
        //    reply is the back-end's error signal (vhost-user.rst, VHOST_USER_GET_CONFIG): no cache.
        byte[]? config = null;
        if (HasProtocolFeature(VhostUserProtocolFeatures.CONFIG) && _options.ConfigSize > 0)
        {
            config = await GetConfigAsync(0, _options.ConfigSize, cancellationToken).ConfigureAwait(false);
        }

        // 7. SET_BACKEND_REQ_FD, only with BACKEND_REQ acked ("Back-end communication"): the
        //    back-end's own requests (CONFIG_CHANGE_MSG) arrive on a socketpair of their own.
        if (HasProtocolFeature(VhostUserProtocolFeatures.BACKEND_REQ))
        {
            await OpenBackendChannelAsync(cancellationToken).ConfigureAwait(false);
        }

        Info = new VhostUserBackendInfo(features, OfferedProtocolFeatures, ProtocolFeatures, queueCount, maxMemSlots, config);
        return Info;
    }

    /// <summary>
    /// SET_FEATURES with <paramref name="guestFeatures"/> ∩ the back-end's offer, plus
    /// VHOST_USER_F_PROTOCOL_FEATURES when the back-end offered it (vhost-user.rst: a front-end
    /// that negotiated protocol features must keep bit 30 in SET_FEATURES), plus VHOST_F_LOG_ALL
    /// while dirty pages are logged (the overload with logAll; vhost-user.rst, "Migration": the
    /// front-end turns logging on and off with SET_FEATURES). Returns what was sent.
    /// </summary>
    public Task<ulong> SetFeaturesAsync(ulong guestFeatures, CancellationToken cancellationToken = default) =>
        SetFeaturesAsync(guestFeatures, logAll: false, cancellationToken);

    /// <inheritdoc cref="SetFeaturesAsync(ulong, CancellationToken)"/>
    public async Task<ulong> SetFeaturesAsync(ulong guestFeatures, bool logAll, CancellationToken cancellationToken = default)
    {
        ulong features = guestFeatures & BackendFeatures & ~VhostUserVirtioFeatures.TransportMask;
        if ((BackendFeatures & VhostUserVirtioFeatures.PROTOCOL_FEATURES) != 0)
        {
            features |= VhostUserVirtioFeatures.PROTOCOL_FEATURES;
        }

        if (logAll)
        {
            features |= (BackendFeatures & VhostUserVirtioFeatures.LOG_ALL) != 0
                ? VhostUserVirtioFeatures.LOG_ALL
                : throw new InvalidOperationException("The back-end does not offer VHOST_F_LOG_ALL: it cannot log the pages it writes.");
        }

        await SendU64Async(VhostUserRequest.SET_FEATURES, features, cancellationToken: cancellationToken).ConfigureAwait(false);
        AckedFeatures = features;
        return features;
    }

    /// <summary>
    /// GET_CONFIG for <paramref name="size"/> bytes at <paramref name="offset"/>. Returns the data,
    /// or null when the back-end signalled an error with an empty reply. Needs CONFIG.
    /// </summary>
    public async Task<byte[]?> GetConfigAsync(int offset, int size, CancellationToken cancellationToken = default)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.CONFIG, VhostUserRequest.GET_CONFIG);
        var request = new byte[VhostUserConfig.HeaderSize + size];
        VhostUserConfig.WritePayload(request, (uint)offset, VhostUserConfigFlags.FRONTEND, new byte[size]);
        using VhostUserReply reply = await SendAndReceiveAsync(VhostUserRequest.GET_CONFIG, request, cancellationToken: cancellationToken)
            .ConfigureAwait(false);
        if (reply.Payload.Length == 0)
        {
            return null;
        }

        VhostUserConfigMessage parsed = VhostUserConfig.Parse(reply.Payload);
        if (parsed.Header.Offset != (uint)offset)
        {
            throw new VhostUserProtocolException(
                $"GET_CONFIG reply is for offset {parsed.Header.Offset}, asked for {offset}.");
        }

        return parsed.Data.ToArray();
    }

    /// <summary>SET_CONFIG of <paramref name="data"/> at <paramref name="offset"/> (acked with REPLY_ACK). Needs CONFIG.</summary>
    public Task SetConfigAsync(int offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.CONFIG, VhostUserRequest.SET_CONFIG);
        var payload = new byte[VhostUserConfig.HeaderSize + data.Length];
        VhostUserConfig.WritePayload(payload, (uint)offset, VhostUserConfigFlags.FRONTEND, data.Span);
        return SendAsync(VhostUserRequest.SET_CONFIG, payload, cancellationToken: cancellationToken);
    }

    private void RequireProtocolFeature(VhostUserProtocolFeatures feature, VhostUserRequest request)
    {
        if (!HasProtocolFeature(feature))
        {
            throw new InvalidOperationException($"{request} needs the {feature} protocol feature, which was not negotiated.");
        }
    }
}
