using Vmm.Core.Memory;
using Vmm.Virtio.Driver;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Conformance;

// The checks of the rings and the memory under them: start, a real request, the memory table
// changed under running rings, stop with GET_VRING_BASE, restart, a kick before enable and a
// device reset.
internal sealed partial class ConformanceRun
{
    /// <summary>How long the kick-before-enable check leaves a kicked ring disabled.</summary>
    private static readonly TimeSpan KickSettleTime = TimeSpan.FromMilliseconds(100);

    private ProbeRequest? _submittedWhileStopped;

    private string RingList => string.Join(", ", Probe.Rings);

    private async Task<Verdict> CheckRingStartAsync(CancellationToken cancellationToken)
    {
        await EnsureConnectionAsync(cancellationToken).ConfigureAwait(false);
        IReadOnlyList<int> started = await StartRingsAsync(cancellationToken).ConfigureAwait(false);
        string memory = Connection.HasProtocolFeature(VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS) ? "ADD_MEM_REG" : "SET_MEM_TABLE";
        string enabled = Connection.RingsNeedEnable ? "set up and enabled" : "set up (enabled from the start: protocol features not negotiated)";
        return Verdict.Pass(
            $"SET_FEATURES 0x{_features:x}, {memory} of {Memory.Regions.Count} region(s), rings {string.Join(", ", started)} {enabled}, size {Options.QueueSize}");
    }

    private async Task<Verdict> CheckRequestAsync(CancellationToken cancellationToken)
    {
        if (!Probe.HasRequests)
        {
            return await Probe.RealRequestAsync(this, cancellationToken).ConfigureAwait(false);
        }

        await EnsureRingsRunningAsync(cancellationToken).ConfigureAwait(false);
        return await Probe.RealRequestAsync(this, cancellationToken).ConfigureAwait(false);
    }

    private async Task<Verdict> CheckBlkWriteAsync(CancellationToken cancellationToken)
    {
        await EnsureRingsRunningAsync(cancellationToken).ConfigureAwait(false);
        return await ((BlkProbe)Probe).WriteAsync(this, cancellationToken).ConfigureAwait(false);
    }

    private async Task<Verdict> CheckMemReplaceAsync(CancellationToken cancellationToken)
    {
        if (NoRequests() is Verdict none)
        {
            return none;
        }

        await EnsureRingsRunningAsync(cancellationToken).ConfigureAwait(false);
        _addedRegion ??= Memory.AddRegion(new GuestMemoryRange(AddedRegionGpa, ExtraRegionSize));
        Step($"SET_MEM_TABLE of {Memory.Regions.Count} regions under running rings");
        await TrackAsync(() => Connection.SetMemoryTableAsync(Memory, cancellationToken), VhostUserRequest.SET_MEM_TABLE).ConfigureAwait(false);
        Step(null);
        _addedRegionSent = true;
        string? error = await ProbeOnceAsync(RegionPool(AddedRegionGpa), cancellationToken).ConfigureAwait(false);
        return error is null
            ? Verdict.Pass(
                $"SET_MEM_TABLE of {Memory.Regions.Count} regions (a new one at 0x{AddedRegionGpa:x}) while rings {RingList} ran; a request with its buffer in the new region completed")
            : Verdict.Fail($"after SET_MEM_TABLE of {Memory.Regions.Count} regions under running rings: {error}");
    }

    private async Task<Verdict> CheckMemSlotsAsync(CancellationToken cancellationToken)
    {
        await EnsureConnectionAsync(cancellationToken).ConfigureAwait(false);
        if (NotNegotiated(VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS) is Verdict missing)
        {
            return missing;
        }

        if (NoRequests() is Verdict none)
        {
            return none;
        }

        await EnsureRingsRunningAsync(cancellationToken).ConfigureAwait(false);
        var steps = new List<string> { $"GET_MAX_MEM_SLOTS {Info!.MaxMemSlots}" };
        if (_addedRegion is GuestMemoryRegion added)
        {
            if (_addedRegionSent)
            {
                await TrackAsync(() => Connection.RemoveMemoryRegionAsync(added, cancellationToken), VhostUserRequest.REM_MEM_REG).ConfigureAwait(false);
                steps.Add($"REM_MEM_REG of 0x{added.GuestPhysicalAddress:x}");
            }

            DropRegion(added);
            _addedRegion = null;
            _addedRegionSent = false;
        }

        GuestMemoryRegion slot = Memory.AddRegion(new GuestMemoryRange(SlotRegionGpa, ExtraRegionSize));
        try
        {
            await TrackAsync(() => Connection.AddMemoryRegionAsync(slot, cancellationToken), VhostUserRequest.ADD_MEM_REG).ConfigureAwait(false);
            steps.Add($"ADD_MEM_REG of 0x{SlotRegionGpa:x}");
            string? error = await ProbeOnceAsync(RegionPool(SlotRegionGpa), cancellationToken).ConfigureAwait(false);
            if (error is not null)
            {
                return Verdict.Fail($"{string.Join(", ", steps)}, then {error}");
            }

            steps.Add("a request in it completed");
            await TrackAsync(() => Connection.RemoveMemoryRegionAsync(slot, cancellationToken), VhostUserRequest.REM_MEM_REG).ConfigureAwait(false);
            steps.Add($"REM_MEM_REG of 0x{SlotRegionGpa:x}");
        }
        finally
        {
            DropRegion(slot);
        }

        string? after = await ProbeOnceAsync(null, cancellationToken).ConfigureAwait(false);
        return after is null
            ? Verdict.Pass($"{string.Join(", ", steps)} while rings {RingList} ran; a request in the first region still completed")
            : Verdict.Fail($"{string.Join(", ", steps)}, then {after}");
    }

    private async Task<Verdict> CheckVringBaseAsync(CancellationToken cancellationToken)
    {
        await EnsureRingsRunningAsync(cancellationToken).ConfigureAwait(false);
        ProbeRing ring = Ring(Probe.ProbeRingIndex);
        ushort made = ring.AvailableIndex(Memory);
        ushort used = ring.UsedIndex(Memory);
        uint stoppedAt = await StopRingAsync(ring, cancellationToken).ConfigureAwait(false);

        // Split rings: the base is the next available index the device would read (vhost-user.rst,
        // VHOST_USER_SET_VRING_BASE), between what it used and what was made available.
        if (used == made && stoppedAt != made)
        {
            return Verdict.Fail($"GET_VRING_BASE of ring {ring.Index} answered {stoppedAt}, but {made} buffers were made available and all were used");
        }

        if ((ushort)(stoppedAt - used) > (ushort)(made - used))
        {
            return Verdict.Fail($"GET_VRING_BASE of ring {ring.Index} answered {stoppedAt}, outside the {used}..{made} the ring holds");
        }

        // A stopped ring is not processed at all ("Ring states"): a buffer made available and
        // kicked now must stay where it is until the restart check starts the ring again.
        if (Probe.HasRequests)
        {
            _submittedWhileStopped = Probe.SubmitProbe(this, Pool);
            ring.Notify();
        }

        _stoppedBase = stoppedAt;
        return Verdict.Pass($"GET_VRING_BASE answered ring {ring.Index} with base {stoppedAt}: the {made} buffers made available, all used");
    }

    private async Task<Verdict> CheckRestartAsync(CancellationToken cancellationToken)
    {
        if (_stoppedBase is not uint stoppedBase || !_rings.TryGetValue(Probe.ProbeRingIndex, out ProbeRing? ring) || ring.Running)
        {
            return Verdict.NotApplicable("not run: no ring was left stopped by vring-base");
        }

        await EnsureConnectionAsync(cancellationToken).ConfigureAwait(false);
        _stoppedBase = null;
        ProbeRequest? pending = _submittedWhileStopped;
        _submittedWhileStopped = null;
        if (pending is not null && ring.UsedIndex(Memory) != (ushort)stoppedBase)
        {
            return Verdict.Fail(
                $"ring {ring.Index} was stopped at {stoppedBase}, yet its used index moved to {ring.UsedIndex(Memory)}: a buffer made available while stopped was processed");
        }

        // As QEMU after SeaBIOS: the same connection, new kick and call eventfds.
        ring.RenewEventFds();
        await StartRingAsync(ring, stoppedBase, cancellationToken).ConfigureAwait(false);
        ring.Notify();
        if (pending is not null)
        {
            string? waited = await CompleteAsync(pending, cancellationToken).ConfigureAwait(false);
            if (waited is not null)
            {
                return Verdict.Fail($"restarted from base {stoppedBase}, but the buffer made available while stopped: {waited}");
            }
        }

        if (Probe.HasRequests)
        {
            string? error = await ProbeOnceAsync(null, cancellationToken).ConfigureAwait(false);
            if (error is not null)
            {
                return Verdict.Fail($"restarted from base {stoppedBase}, then {error}");
            }
        }

        string served = Probe.HasRequests
            ? "; a buffer made available while it was stopped was left alone until then and completed, and so did a new one"
            : "";
        return Verdict.Pass($"ring {ring.Index} restarted on the same connection from base {stoppedBase} with new kick and call eventfds{served}");
    }

    private async Task<Verdict> CheckVringBaseTwiceAsync(CancellationToken cancellationToken)
    {
        await EnsureRingsRunningAsync(cancellationToken).ConfigureAwait(false);
        ProbeRing ring = Ring(Probe.ProbeRingIndex);
        uint first = await StopRingAsync(ring, cancellationToken).ConfigureAwait(false);
        uint second = await StopRingAsync(ring, cancellationToken, $"stopping the stopped ring {ring.Index} again").ConfigureAwait(false);
        return second == first
            ? Verdict.Pass($"GET_VRING_BASE of ring {ring.Index} answered {first}, and {second} again on the stopped ring")
            : Verdict.Fail($"GET_VRING_BASE of ring {ring.Index} answered {first}, then {second} on the stopped ring");
    }

    private async Task<Verdict> CheckKickBeforeEnableAsync(CancellationToken cancellationToken)
    {
        if (NoRequests() is Verdict none)
        {
            return none;
        }

        await EnsureRingsRunningAsync(cancellationToken).ConfigureAwait(false);
        if (!Connection.RingsNeedEnable)
        {
            return Verdict.NotApplicable("protocol features not negotiated: rings start enabled, there is no SET_VRING_ENABLE");
        }

        ProbeRing ring = Ring(Probe.ProbeRingIndex);
        uint stoppedAt = await StopRingAsync(ring, cancellationToken).ConfigureAwait(false);

        // The driver makes a buffer available and kicks while the back-end has no kick fd and the
        // ring is disabled: the eventfd keeps the count, and the back-end must find it once the
        // ring is enabled (QEMU replays a ring this way after a reconnect).
        ring.RenewEventFds();
        ProbeRequest request = Probe.SubmitProbe(this, Pool);
        ring.Notify();
        await SetUpDisabledRingAsync(ring, stoppedAt, cancellationToken).ConfigureAwait(false);

        // A back-end that reads the kick while the ring is disabled and drops it does so as soon
        // as it watches the fd; GET_FEATURES makes sure SET_VRING_KICK was handled, the pause
        // gives its event loop the time to act, so the outcome does not hang on a race.
        await Connection.GetU64Async(VhostUserRequest.GET_FEATURES, cancellationToken).ConfigureAwait(false);
        await Task.Delay(KickSettleTime, cancellationToken).ConfigureAwait(false);
        Step($"SET_VRING_ENABLE(1) of ring {ring.Index}");
        await TrackAsync(() => Connection.SetRingEnableAsync(ring.Index, true, cancellationToken), VhostUserRequest.SET_VRING_ENABLE)
            .ConfigureAwait(false);
        Step(null);
        ring.Running = true;
        string? error = await CompleteAsync(request, cancellationToken).ConfigureAwait(false);
        return error is null
            ? Verdict.Pass("a buffer made available and kicked before SET_VRING_KICK and SET_VRING_ENABLE(1) completed once the ring was enabled, without another kick")
            : Verdict.Fail($"a buffer made available and kicked before SET_VRING_ENABLE(1), no kick after: {error}");
    }

    private async Task<Verdict> CheckResetDeviceAsync(CancellationToken cancellationToken)
    {
        await EnsureConnectionAsync(cancellationToken).ConfigureAwait(false);
        if (NotNegotiated(VhostUserProtocolFeatures.RESET_DEVICE) is Verdict missing)
        {
            return missing;
        }

        // As QEMU resets a device: its rings stopped first (GET_VRING_BASE), then RESET_DEVICE.
        foreach (ProbeRing running in _rings.Values.Where(r => r.Running).ToArray())
        {
            await StopRingAsync(running, cancellationToken).ConfigureAwait(false);
        }

        Step("RESET_DEVICE");
        await TrackAsync(() => Connection.ResetDeviceAsync(cancellationToken), VhostUserRequest.RESET_DEVICE).ConfigureAwait(false);
        Step(null);
        ForgetDeviceState();

        // The whole table again with SET_MEM_TABLE: valid whether or not the back-end dropped it.
        await TrackAsync(() => Connection.SetMemoryTableAsync(Memory, cancellationToken), VhostUserRequest.SET_MEM_TABLE).ConfigureAwait(false);
        _memorySent = true;
        _addedRegionSent = _addedRegion is not null;
        await StartRingsAsync(cancellationToken).ConfigureAwait(false);
        if (Probe.HasRequests)
        {
            string? error = await ProbeOnceAsync(null, cancellationToken).ConfigureAwait(false);
            if (error is not null)
            {
                return Verdict.Fail($"RESET_DEVICE acked and the device set up again, then {error}");
            }
        }

        string served = Probe.HasRequests ? " and a request completed" : "";
        return Verdict.Pass($"rings stopped, RESET_DEVICE acked; SET_MEM_TABLE, SET_FEATURES and rings {RingList} set up again{served}");
    }

    private Verdict? NoRequests() =>
        Probe.HasRequests ? null : Verdict.NotApplicable($"no request is known for device type {Probe.Name}");

    /// <summary>A buffer pool over the extra region at <paramref name="gpa"/>, so a request's data lies there.</summary>
    private static GuestBufferPool RegionPool(ulong gpa) => new(new GuestMemoryAllocator(gpa, ExtraRegionSize));

    private void DropRegion(GuestMemoryRegion region) =>
        Memory.RemoveRegion(region.GuestPhysicalAddress, region.Size, region.UserAddress)?.Dispose();
}
