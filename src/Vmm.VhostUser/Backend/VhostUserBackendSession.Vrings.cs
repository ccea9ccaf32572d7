using Vmm.Core.Events;
using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.Virtio.Queues;
using Vmm.VhostUser.Inflight;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Metrics;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Backend;

public sealed partial class VhostUserBackendSession
{
    private bool PackedRings => (_ackedFeatures & VirtioFeatures.RING_PACKED) != 0;

    private BackendVring Vring(uint index)
    {
        if (index >= (uint)_vrings.Length)
        {
            throw new RequestRejectedException($"ring {index} does not exist (the device has {_vrings.Length})");
        }

        return _vrings[index];
    }

    /// <summary>
    /// SET_VRING_NUM: 1 to the device's maximum, and for a split ring a power of two (virtio 1.2,
    /// 2.7: packed rings allow any size). Checked here rather than only when the ring starts, so
    /// the front-end hears of it from the request that was wrong. The ring layout is known from
    /// SET_FEATURES, which QEMU and other front-ends send before the rings are set up; a
    /// front-end that set a packed ring's odd size before acking RING_PACKED is refused.
    /// </summary>
    private void SetVringNum(VhostUserVringState state)
    {
        BackendVring vring = Vring(state.Index);
        ushort max = _device.GetMaxQueueSize((int)state.Index);
        if (state.Num == 0 || state.Num > max)
        {
            throw new RequestRejectedException($"ring {state.Index}: size {state.Num} is outside 1..{max}");
        }

        if (!PackedRings && !uint.IsPow2(state.Num))
        {
            throw new RequestRejectedException($"ring {state.Index}: size {state.Num} is not a power of two, which a split ring needs (virtio 1.2, 2.7)");
        }

        vring.Size = (ushort)state.Num;
    }

    private void SetVringAddress(VhostUserVringAddr address)
    {
        BackendVring vring = Vring(address.Index);
        string? invalid = address.Validate();
        if (invalid is not null)
        {
            throw new RequestRejectedException($"ring {address.Index}: {invalid}");
        }

        if ((address.Flags & VhostUserVringAddr.VHOST_VRING_F_LOG) != 0)
        {
            throw new RequestRejectedException($"ring {address.Index}: dirty logging (VHOST_VRING_F_LOG) is not supported; LOG_ALL was never offered");
        }

        vring.DescriptorUserAddress = address.Descriptor;
        vring.AvailableUserAddress = address.Available;
        vring.UsedUserAddress = address.Used;
        vring.HasAddresses = true;
    }

    private void SetVringBase(VhostUserVringState state)
    {
        BackendVring vring = Vring(state.Index);
        if (vring.Running)
        {
            throw new RequestRejectedException($"ring {state.Index}: SET_VRING_BASE on a running ring");
        }

        if (!PackedRings && (state.Num & 0xFFFF_0000) != 0)
        {
            throw new RequestRejectedException($"ring {state.Index}: split ring base {state.Num} exceeds 16 bits");
        }

        vring.Base = state.Num;
        vring.Resume = null;
        vring.Stopped = null;
    }

    /// <summary>
    /// GET_VRING_BASE stops the ring (vhost-user.rst, "Ring states") and reports where it stopped.
    /// The request's num is ignored: some front-ends fill it with junk.
    /// </summary>
    private Reply GetVringBase(VhostUserVringState state)
    {
        BackendVring vring = Vring(state.Index);
        VirtqueueState? stopped = StopRing(vring) ?? vring.Resume ?? vring.Stopped;
        vring.Stopped = stopped;
        vring.Resume = null;
        vring.KickReceived = false;
        uint num = stopped is { } s ? EncodeBase(s) : vring.Base;
        vring.Base = num;
        var reply = new VhostUserVringState(state.Index, num);
        reply.Write(_replyBuffer);
        return Reply.Payload(VhostUserVringState.Size);
    }

    private void SetVringKick(VhostUserMessage message)
    {
        VhostUserVringFile file = VhostUserVringFile.Parse(VhostUserCodec.ReadU64(message.Payload.Span));
        BackendVring vring = Vring(file.Index);

        // NOFD: no eventfd, the ring is polled (vhost-user.rst, SET_VRING_KICK).
        EventFd? kick = file.NoFd ? null : TakeEventFd(message, vring, "kick");
        bool wasRunning = vring.Running;
        VirtqueueState? state = wasRunning ? StopRing(vring) : null;
        vring.SetKick(kick);
        if (state is not null)
        {
            vring.Resume = state;
        }

        TryStartRing(vring);
    }

    private void SetVringCall(VhostUserMessage message)
    {
        VhostUserVringFile file = VhostUserVringFile.Parse(VhostUserCodec.ReadU64(message.Payload.Span));
        BackendVring vring = Vring(file.Index);

        // Takes effect on a running ring at once: the queue's interrupt line swaps its eventfd.
        vring.SetCall(file.NoFd ? null : TakeEventFd(message, vring, "call"));
    }

    private void SetVringError(VhostUserMessage message)
    {
        VhostUserVringFile file = VhostUserVringFile.Parse(VhostUserCodec.ReadU64(message.Payload.Span));
        BackendVring vring = Vring(file.Index);
        vring.SetError(file.NoFd ? null : TakeEventFd(message, vring, "error"));
    }

    /// <summary>
    /// The message's fd as a notifier. It must be an eventfd: the spec allows pipes only where
    /// eventfd does not exist (vhost-user.rst, "Support for platforms other than Linux"), and
    /// this back-end runs on Linux, where QEMU, crosvm, cloud-hypervisor and DPDK pass eventfds.
    /// Anything else (a pipe's read end, /dev/full, a socket) would fail or block the writes
    /// made to it, so it is refused here, at the request that brings it. It is made
    /// non-blocking: a write to a counter the front-end saturated then drops the signal (a
    /// wake-up is pending anyway) instead of blocking the ring's worker.
    /// </summary>
    private static EventFd TakeEventFd(VhostUserMessage message, BackendVring vring, string role)
    {
        try
        {
            return new EventFd(message.TakeFd(0));
        }
        catch (Exception e) when (e is ArgumentException or PosixException)
        {
            throw new RequestRejectedException($"ring {vring.Index}: the {role} fd is refused: {e.Message}", e);
        }
    }

    private void SetVringEnable(VhostUserVringState state)
    {
        BackendVring vring = Vring(state.Index);
        if (state.Num > 1)
        {
            throw new RequestRejectedException($"ring {state.Index}: SET_VRING_ENABLE takes 0 or 1, not {state.Num}");
        }

        vring.Enabled = state.Num == 1;
        if (vring.Enabled)
        {
            TryStartRing(vring);
        }
        else if (vring.Running)
        {
            // Disabled: the device stops taking requests; the ring resumes where it was when enabled again.
            vring.Resume = StopRing(vring);
        }
    }

    /// <summary>
    /// Starts the ring on the device once everything it needs is there: size, addresses, a kick
    /// (or NOFD), guest memory, and enabled. A kick signalled before that is kept in the eventfd's
    /// counter, so it is seen as soon as the ring starts.
    /// </summary>
    private void TryStartRing(BackendVring vring)
    {
        if (vring.Running || !vring.Enabled || !vring.KickReceived || !vring.HasAddresses || vring.Size == 0 || _memory.Regions.Count == 0)
        {
            return;
        }

        VirtqueueParams parameters = TranslateRing(vring);
        VirtqueueState initial = vring.Resume ?? InitialState(vring, parameters);
        EventFd kick = vring.WorkerKick;
        SplitInflightQueue? inflight = InflightFor(vring);
        IReadOnlyList<ushort>? resubmit = null;
        if (inflight is not null && vring.Resume is null)
        {
            // A fresh start over a region the front-end kept: what the previous back-end took
            // and never returned goes to the device again, oldest first.
            try
            {
                resubmit = inflight.Recover(initial.UsedIndex);
            }
            catch (InvalidDataException e)
            {
                throw new RequestRejectedException($"ring {vring.Index}: {e.Message}", e);
            }

            Log.InflightInstalled(_logger, vring.Index, vring.Size, resubmit.Count);

            // The heads in flight are the avail entries right after the used index (the old
            // back-end popped them in order and never completed them): they come back through
            // the resubmit list, so the avail ring resumes after them, or each would run twice
            // (libvhost-user: last_avail_idx = used_idx + inuse). A base past the used index
            // already says where the avail ring resumes.
            if (initial.AvailableIndex == initial.UsedIndex)
            {
                initial = initial with { AvailableIndex = (ushort)(initial.AvailableIndex + resubmit.Count) };
            }
        }

        PackedInflightQueue? packedInflight = PackedInflightFor(vring);
        IReadOnlyList<PackedResubmitChain>? resubmitPacked = null;
        if (packedInflight is not null)
        {
            (resubmitPacked, initial) = RecoverPacked(vring, packedInflight, parameters, initial);
        }

        var resources = new VirtqueueResources(parameters, _memory, kick, vring.Call)
        {
            // NOFD: nobody will signal the kick; the device polls the ring (vhost-user.rst, SET_VRING_KICK).
            PollWithoutKick = vring.Kick is null,
            Inflight = (IInflightTracker?)inflight ?? packedInflight,
            Resubmit = resubmit,
            ResubmitPacked = resubmitPacked,
        };
        ulong deviceFeatures = _ackedFeatures & ~VhostUserVirtioFeatures.TransportMask;
        try
        {
            _device.StartQueue(vring.Index, resources, deviceFeatures, initial);
        }
        catch (VirtqueueException e)
        {
            throw new RequestRejectedException($"ring {vring.Index} cannot start: {e.Message}", e);
        }

        vring.Running = true;
        vring.Resume = null;
        if (!_handshakeCounted)
        {
            _handshakeCounted = true;
            BackendMetrics.FirstRingStarted(_metricsName, _startedAt);
        }

        vring.Stopped = null;

        // Look at the ring once now: buffers made available before the start need no new kick.
        kick.Signal();
        Log.RingStarted(_logger, vring.Index, vring.Size, initial.AvailableIndex, initial.UsedIndex);
    }

    private VirtqueueParams TranslateRing(BackendVring vring)
    {
        // SET_VRING_ADDR carries front-end user addresses (vhost-user.rst, "Vring address description").
        ulong descriptor = Translate(vring, vring.DescriptorUserAddress, "descriptor table");
        ulong available = Translate(vring, vring.AvailableUserAddress, "available ring");
        ulong used = Translate(vring, vring.UsedUserAddress, "used ring");
        return new VirtqueueParams(vring.Size, descriptor, available, used);
    }

    private ulong Translate(BackendVring vring, ulong userAddress, string what)
    {
        if (!_memory.TryTranslateUserAddress(userAddress, 1, out ulong gpa))
        {
            throw new RequestRejectedException($"ring {vring.Index}: {what} at user address 0x{userAddress:x} is outside the memory table");
        }

        return gpa;
    }

    /// <summary>
    /// The state a ring starts from after SET_VRING_BASE. Split rings: the base is the next
    /// available index, and the used index is what the used ring in guest memory says (requests
    /// between the two are in flight). Packed rings: bits 0-14 the next available position, bit 15
    /// its wrap counter, and the same for the used side in bits 16-31 (zero there: equal to the
    /// available side).
    /// </summary>
    private VirtqueueState InitialState(BackendVring vring, VirtqueueParams parameters)
    {
        if (!PackedRings)
        {
            ushort used;
            try
            {
                used = _memory.ReadUInt16Acquire(parameters.DeviceArea + 2);
            }
            catch (GuestMemoryException e)
            {
                throw new RequestRejectedException($"ring {vring.Index}: used ring is outside guest memory", e);
            }

            return new VirtqueueState((ushort)vring.Base, used);
        }

        ushort availablePart = (ushort)(vring.Base & 0xFFFF);
        ushort usedPart = (ushort)(vring.Base >> 16);
        if (usedPart == 0)
        {
            usedPart = availablePart;
        }

        return new VirtqueueState(
            (ushort)(availablePart & 0x7FFF), (ushort)(usedPart & 0x7FFF), (availablePart & 0x8000) != 0, (usedPart & 0x8000) != 0);
    }

    private uint EncodeBase(VirtqueueState state)
    {
        if (!PackedRings)
        {
            return state.AvailableIndex;
        }

        uint available = (uint)(state.AvailableIndex & 0x7FFF) | (state.AvailableWrapCounter ? 0x8000u : 0);
        uint used = (uint)(state.UsedIndex & 0x7FFF) | (state.UsedWrapCounter ? 0x8000u : 0);
        return available | (used << 16);
    }

    /// <summary>
    /// Stops the ring on the device and returns where it stood. A worker that does not stop in
    /// time (stuck in the device) leaves the ring marked running and the session marked wedged:
    /// the memory it may touch is then never unmapped, and the session ends.
    /// </summary>
    private VirtqueueState? StopRing(BackendVring vring)
    {
        if (!vring.Running || _wedged)
        {
            // A wedged session does not wait on its stuck worker again: it is ending anyway.
            return null;
        }

        VirtqueueState? state;
        try
        {
            state = _device.StopQueue(vring.Index);
        }
        catch (TimeoutException e)
        {
            _wedged = true;
            Log.RingStuck(_logger, vring.Index, e.Message);
            EndSession($"ring {vring.Index} did not stop: {e.Message}");
            return null;
        }

        vring.Running = false;
        Log.RingStopped(_logger, vring.Index, state?.AvailableIndex ?? 0, state?.UsedIndex ?? 0);
        return state;
    }

    private List<BackendVring> PauseRunningRings()
    {
        var paused = new List<BackendVring>();
        foreach (BackendVring vring in _vrings)
        {
            if (vring.Running)
            {
                vring.Resume = StopRing(vring);
                paused.Add(vring);
            }
        }

        return paused;
    }

    private void ResumeRings(List<BackendVring> paused)
    {
        foreach (BackendVring vring in paused)
        {
            TryStartRing(vring);
        }
    }

    private void StopAllRings()
    {
        foreach (BackendVring vring in _vrings)
        {
            StopRing(vring);
        }
    }

    /// <summary>True while any ring runs on the device (its worker may be touching guest memory and the inflight region).</summary>
    private bool AnyRingRunning => Array.Exists(_vrings, v => v.Running);
}
