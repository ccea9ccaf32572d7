using System.Text;
using Vmm.Core.Posix;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Conformance;

// The checks of the protocol itself: handshake, features, configuration space, queue count,
// inflight region, device status and REPLY_ACK.
internal sealed partial class ConformanceRun
{
    private bool _replyAckNegotiated;

    private async Task<Verdict> CheckHandshakeAsync(CancellationToken cancellationToken)
    {
        VhostUserBackendInfo info = await HandshakeAsync(cancellationToken).ConfigureAwait(false);
        var steps = new StringBuilder($"GET_FEATURES 0x{info.Features:x}");
        if ((info.Features & VhostUserVirtioFeatures.PROTOCOL_FEATURES) != 0)
        {
            steps.Append($", GET_PROTOCOL_FEATURES 0x{(ulong)info.OfferedProtocolFeatures:x}, SET_PROTOCOL_FEATURES 0x{(ulong)info.ProtocolFeatures:x}");
        }

        steps.Append(", SET_OWNER");
        if (info.QueueCount is int queues)
        {
            steps.Append($", GET_QUEUE_NUM {queues}");
        }

        if (info.MaxMemSlots is ulong slots)
        {
            steps.Append($", GET_MAX_MEM_SLOTS {slots}");
        }

        if (Connection.HasProtocolFeature(VhostUserProtocolFeatures.BACKEND_REQ))
        {
            steps.Append(", SET_BACKEND_REQ_FD");
        }

        return Verdict.Pass($"{steps} answered in that order");
    }

    private async Task<Verdict> CheckProtocolFeaturesAsync(CancellationToken cancellationToken)
    {
        await EnsureConnectionAsync(cancellationToken).ConfigureAwait(false);
        VhostUserBackendInfo info = Info!;
        if ((info.Features & VhostUserVirtioFeatures.PROTOCOL_FEATURES) == 0)
        {
            return Verdict.Fail(
                $"GET_FEATURES 0x{info.Features:x} lacks bit 30: no protocol feature (REPLY_ACK, CONFIG, MQ, ring enable) can be negotiated");
        }

        VhostUserProtocolFeatures beyond = VhostUserProtocolFeatureMask.Unknown(info.OfferedProtocolFeatures);
        string note = beyond == VhostUserProtocolFeatures.None
            ? ""
            : $"; bits 20 and up offered (0x{(ulong)beyond:x}) are left unacked: implementations disagree on their meaning";
        return Verdict.Pass($"bit 30 offered; protocol features {Names(info.OfferedProtocolFeatures)}{note}");
    }

    private async Task<Verdict> CheckConfigSizesAsync(CancellationToken cancellationToken)
    {
        await EnsureConnectionAsync(cancellationToken).ConfigureAwait(false);
        if (NoConfigSpace() is Verdict missing)
        {
            return missing;
        }

        int size = Probe.ConfigSize;

        byte[]? whole = await Connection.GetConfigAsync(0, size, cancellationToken).ConfigureAwait(false);
        if (whole is null)
        {
            return Verdict.Fail($"GET_CONFIG of the whole {size}-byte structure answered an empty payload (an error)");
        }

        Config = whole;

        // A front-end may read less than the whole structure: QEMU 7.2 reads 57 of blk's 60 bytes.
        int shorter = size - 3;
        byte[]? part = await Connection.GetConfigAsync(0, shorter, cancellationToken).ConfigureAwait(false);
        if (part is null)
        {
            return Verdict.Fail($"GET_CONFIG of {shorter} of the {size} bytes answered an empty payload (an error)");
        }

        return part.AsSpan().SequenceEqual(whole.AsSpan(0, shorter))
            ? Verdict.Pass($"GET_CONFIG of {size} and of {shorter} bytes answered with exactly that many bytes, the same data")
            : Verdict.Fail($"GET_CONFIG of {shorter} bytes returned other data than the first {shorter} of the whole structure");
    }

    private async Task<Verdict> CheckConfigOffsetAsync(CancellationToken cancellationToken)
    {
        await EnsureConnectionAsync(cancellationToken).ConfigureAwait(false);
        if (NoConfigSpace() is Verdict missing)
        {
            return missing;
        }

        if (Config is not byte[] whole)
        {
            return Verdict.NotApplicable("not run: the whole configuration could not be read (config-sizes)");
        }

        int offset = whole.Length >= 16 ? 8 : whole.Length / 2;
        int length = Math.Min(8, whole.Length - offset);
        byte[]? part = await Connection.GetConfigAsync(offset, length, cancellationToken).ConfigureAwait(false);
        if (part is null)
        {
            return Verdict.Fail($"GET_CONFIG of {length} bytes at offset {offset} answered an empty payload (an error)");
        }

        if (part.AsSpan().SequenceEqual(whole.AsSpan(offset, length)))
        {
            return Verdict.Pass($"GET_CONFIG of {length} bytes at offset {offset} returned what the whole structure holds there");
        }

        return part.AsSpan().SequenceEqual(whole.AsSpan(0, length))
            ? Verdict.Fail($"GET_CONFIG of {length} bytes at offset {offset} returned the bytes at offset 0: the offset is ignored")
            : Verdict.Fail($"GET_CONFIG of {length} bytes at offset {offset} returned other bytes than the whole structure holds there");
    }

    private async Task<Verdict> CheckQueueNumAsync(CancellationToken cancellationToken)
    {
        await EnsureConnectionAsync(cancellationToken).ConfigureAwait(false);
        int? implied = Config is byte[] config ? Probe.ConfigQueueCount(config, Connection.BackendFeatures) : null;
        string impliedText = implied is int c ? $"; the configuration space says {c}" : "";
        if (!Connection.HasProtocolFeature(VhostUserProtocolFeatures.MQ))
        {
            return Verdict.NotApplicable(
                $"MQ not offered, so the queue count is the device type's{impliedText} (the spec recommends offering MQ even then)");
        }

        int queues = Info!.QueueCount!.Value;
        if (queues < Probe.MinQueues)
        {
            return Verdict.Fail($"GET_QUEUE_NUM answered {queues}, but device type {Probe.Name} has at least {Probe.MinQueues} queues");
        }

        if (implied is int wanted && wanted > queues)
        {
            return Verdict.Fail($"GET_QUEUE_NUM answered {queues}, fewer than the {wanted} queues the configuration space announces");
        }

        return Verdict.Pass($"GET_QUEUE_NUM answered {queues} after MQ was acked{impliedText}");
    }

    private async Task<Verdict> CheckInflightAsync(CancellationToken cancellationToken)
    {
        await EnsureConnectionAsync(cancellationToken).ConfigureAwait(false);
        if (NotNegotiated(VhostUserProtocolFeatures.INFLIGHT_SHMFD) is Verdict missing)
        {
            return missing;
        }

        // QEMU asks for every queue of the device, before the first ring starts.
        ushort queues = (ushort)Math.Max(Info!.QueueCount ?? Probe.MinQueues, Probe.Rings.Max() + 1);
        ushort size = Options.QueueSize;
        // A range beyond the file sent with it is a protocol violation GetInflightFdAsync throws.
        using VhostUserInflightRegion? region = await Connection.GetInflightFdAsync(queues, size, cancellationToken).ConfigureAwait(false);
        if (region is null)
        {
            return Verdict.Fail($"GET_INFLIGHT_FD for {queues} queues of {size} was refused (mmap_size 0, no fd) before any ring ran");
        }

        // Per queue at least a QueueRegionSplit: a 16-byte header and one 16-byte DescStateSplit per descriptor.
        ulong needed = (ulong)queues * (16 + (16 * (ulong)size));
        if (region.MmapSize < needed)
        {
            return Verdict.Fail($"GET_INFLIGHT_FD for {queues} queues of {size} answered a {region.MmapSize}-byte region; split rings need at least {needed}");
        }

        using (SharedMapping.Map(region.Fd, region.MmapOffset, region.MmapSize))
        {
            // Mapping it is what the front-end does to keep it across a reconnect.
        }

        await TrackAsync(() => Connection.SetInflightFdAsync(region, cancellationToken), VhostUserRequest.SET_INFLIGHT_FD).ConfigureAwait(false);
        return Verdict.Pass(
            $"GET_INFLIGHT_FD for {queues} queues of {size}: a mappable {region.MmapSize}-byte region (split rings need {needed}); SET_INFLIGHT_FD of it acked");
    }

    private async Task<Verdict> CheckStatusAsync(CancellationToken cancellationToken)
    {
        await EnsureConnectionAsync(cancellationToken).ConfigureAwait(false);
        if (NotNegotiated(VhostUserProtocolFeatures.STATUS) is Verdict missing)
        {
            return missing;
        }

        // The bring-up sent FEATURES_OK and DRIVER_OK and read the status after each.
        await EnsureRingsRunningAsync(cancellationToken).ConfigureAwait(false);
        foreach ((VirtioDeviceStatus sent, ulong? read) in new[] { (StatusFeaturesOk, _statusAfterFeatures), (StatusDriverOk, _statusAfterStart) })
        {
            // The device shows what the driver wrote; it may only clear FEATURES_OK (features
            // refused) or add DEVICE_NEEDS_RESET, and either is a failure here (virtio 1.2, 2.1).
            const ulong compared = 0x4F;
            if (read is not ulong value || (value & compared) != (ulong)sent)
            {
                return Verdict.Fail($"SET_STATUS 0x{(ulong)sent:x}, then GET_STATUS answered {(read is ulong v ? $"0x{v:x}" : "nothing")}");
            }
        }

        return Verdict.Pass(
            $"SET_STATUS 0x{(ulong)StatusFeaturesOk:x} after SET_FEATURES and 0x{(ulong)StatusDriverOk:x} once the rings started; GET_STATUS answered 0x{_statusAfterFeatures:x} and 0x{_statusAfterStart:x}");
    }

    private async Task<Verdict> CheckConfigWriteAsync(CancellationToken cancellationToken)
    {
        await EnsureConnectionAsync(cancellationToken).ConfigureAwait(false);
        if (NotNegotiated(VhostUserProtocolFeatures.CONFIG) is Verdict missing)
        {
            return missing;
        }

        if (Probe.DeviceId != VirtioDeviceId.Block)
        {
            return Verdict.NotApplicable($"no driver-writable configuration field is known for device type {Probe.Name}");
        }

        await EnsureRingsRunningAsync(cancellationToken).ConfigureAwait(false);
        if ((Features!.Value & VirtioBlkFeatures.CONFIG_WCE) == 0)
        {
            return Verdict.NotApplicable("VIRTIO_BLK_F_CONFIG_WCE not offered: blk's writeback field is read-only");
        }

        if (Config is not byte[] config)
        {
            return Verdict.NotApplicable("not run: the configuration could not be read (config-sizes)");
        }

        // Writes back the value read: the device's cache mode does not change.
        byte writeback = config[VirtioBlkConfig.WritebackOffset];
        await TrackAsync(() => Connection.SetConfigAsync(VirtioBlkConfig.WritebackOffset, new[] { writeback }, cancellationToken),
            VhostUserRequest.SET_CONFIG).ConfigureAwait(false);
        byte[]? after = await Connection.GetConfigAsync(0, config.Length, cancellationToken).ConfigureAwait(false);
        if (after is null || after[VirtioBlkConfig.WritebackOffset] != writeback)
        {
            return Verdict.Fail(
                $"SET_CONFIG of writeback = {writeback} was acked, but GET_CONFIG then read {(after is null ? "an error" : after[VirtioBlkConfig.WritebackOffset].ToString())}");
        }

        return Verdict.Pass($"SET_CONFIG of writeback (1 byte at offset {VirtioBlkConfig.WritebackOffset}) with its value {writeback} acked and read back");
    }

    private Task<Verdict> CheckReplyAckAsync(CancellationToken cancellationToken)
    {
        _ = cancellationToken;
        if (!_replyAckNegotiated)
        {
            return Task.FromResult(Info is null && _acked.Count == 0
                ? Verdict.NotApplicable("not run: the handshake did not complete")
                : Verdict.NotApplicable("REPLY_ACK not offered: no request could ask for an ack"));
        }

        if (_unacked.Count > 0)
        {
            return Task.FromResult(Verdict.Fail(string.Join("; ", _unacked)));
        }

        string names = string.Join(", ", _acked.Distinct());
        return Task.FromResult(Verdict.Pass($"all {_acked.Count} requests sent with NEED_REPLY were acked ({names})"));
    }

    private async Task<Verdict> CheckConfigBoundsAsync(CancellationToken cancellationToken)
    {
        await EnsureConnectionAsync(cancellationToken).ConfigureAwait(false);
        if (NotNegotiated(VhostUserProtocolFeatures.CONFIG) is Verdict missing)
        {
            return missing;
        }

        int size = Probe.ConfigSize + 16;
        try
        {
            byte[]? reply = await Connection.GetConfigAsync(0, size, cancellationToken).ConfigureAwait(false);
            return Verdict.Pass(reply is null
                ? $"GET_CONFIG of {size} bytes, more than the structure has, answered an empty payload (the spec's error reply)"
                : $"GET_CONFIG of {size} bytes, more than the structure has, answered {size} bytes");
        }
        catch (VhostUserProtocolException e)
        {
            return Verdict.Fail($"{e.Message}; a GET_CONFIG reply MUST be as large as the request, or empty to signal an error");
        }
    }

    /// <summary>N/A when CONFIG was not negotiated or the device type has no configuration space, else null.</summary>
    private Verdict? NoConfigSpace() =>
        NotNegotiated(VhostUserProtocolFeatures.CONFIG)
        ?? (Probe.ConfigSize == 0 ? Verdict.NotApplicable($"device type {Probe.Name} has no configuration space") : null);

    /// <summary>N/A when <paramref name="feature"/> was not negotiated (not offered, or not acked by the front-end), else null.</summary>
    private Verdict? NotNegotiated(VhostUserProtocolFeatures feature) =>
        Connection.HasProtocolFeature(feature) ? null
        : (Connection.OfferedProtocolFeatures & feature) != 0
            ? Verdict.NotApplicable($"{feature} offered, but not acked by this front-end (VhostUserFrontendConnection.SupportedProtocolFeatures)")
            : Verdict.NotApplicable($"{feature} not offered");

    private static string Names(VhostUserProtocolFeatures features)
    {
        var names = new List<string>();
        for (int bit = 0; bit < 64; bit++)
        {
            var one = (VhostUserProtocolFeatures)(1UL << bit);
            if ((features & one) != 0)
            {
                names.Add(bit < 20 ? one.ToString() : $"bit {bit}");
            }
        }

        return $"0x{(ulong)features:x} ({string.Join(" ", names)})";
    }
}
