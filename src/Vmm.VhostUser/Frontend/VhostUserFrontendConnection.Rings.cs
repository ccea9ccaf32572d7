using Vmm.Core.Posix;
using System.Runtime.InteropServices;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

public sealed partial class VhostUserFrontendConnection
{
    // --- Memory --------------------------------------------------------------------------------

    /// <summary>
    /// Exports <paramref name="memory"/>'s regions: one ADD_MEM_REG each when CONFIGURE_MEM_SLOTS
    /// is negotiated (what QEMU does), otherwise one SET_MEM_TABLE, which carries at most
    /// VHOST_MEMORY_BASELINE_NREGIONS (8) regions (vhost-user.rst, "Memory region description").
    /// </summary>
    public async Task SetMemoryAsync(GuestMemory memory, CancellationToken cancellationToken = default)
    {
        IReadOnlyList<GuestMemoryRegion> regions = memory.Regions;
        if (HasProtocolFeature(VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS))
        {
            ulong slots = Info?.MaxMemSlots ?? ulong.MaxValue;
            if ((ulong)regions.Count > slots)
            {
                throw new VhostUserIncompatibleBackendException(
                    $"Guest memory has {regions.Count} regions but the back-end has {slots} memory slots.");
            }

            foreach (GuestMemoryRegion region in regions)
            {
                await AddMemoryRegionAsync(region, cancellationToken).ConfigureAwait(false);
            }

            return;
        }

        await SetMemoryTableAsync(memory, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>SET_MEM_TABLE with every region of <paramref name="memory"/> and one fd per region.</summary>
    public Task SetMemoryTableAsync(GuestMemory memory, CancellationToken cancellationToken = default)
    {
        IReadOnlyList<GuestMemoryRegion> regions = memory.Regions;
        if (regions.Count == 0)
        {
            throw new ArgumentException("Guest memory has no regions to export.", nameof(memory));
        }

        if (regions.Count > VhostUserMemoryTable.VHOST_MEMORY_BASELINE_NREGIONS)
        {
            throw new VhostUserIncompatibleBackendException(
                $"Guest memory has {regions.Count} regions; more than {VhostUserMemoryTable.VHOST_MEMORY_BASELINE_NREGIONS} need the back-end's CONFIGURE_MEM_SLOTS.");
        }

        var table = new VhostUserMemoryRegion[regions.Count];
        var fds = new SafeHandle[regions.Count];
        for (int i = 0; i < regions.Count; i++)
        {
            table[i] = Describe(regions[i]);
            fds[i] = regions[i].Fd;
        }

        var payload = new byte[VhostUserMemoryTable.PayloadSize(table.Length)];
        VhostUserMemoryTable.Write(payload, table);
        return SendAsync(VhostUserRequest.SET_MEM_TABLE, payload, fds, cancellationToken: cancellationToken);
    }

    /// <summary>ADD_MEM_REG for one region (its fd travels with it). Needs CONFIGURE_MEM_SLOTS.</summary>
    public Task AddMemoryRegionAsync(GuestMemoryRegion region, CancellationToken cancellationToken = default)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS, VhostUserRequest.ADD_MEM_REG);
        var payload = new byte[VhostUserSingleMemoryRegion.Size];
        new VhostUserSingleMemoryRegion(Describe(region)).Write(payload);
        return SendAsync(VhostUserRequest.ADD_MEM_REG, payload, [region.Fd], cancellationToken: cancellationToken);
    }

    /// <summary>REM_MEM_REG for one region (no fd: vhost-user.rst says the front-end sends none).</summary>
    public Task RemoveMemoryRegionAsync(GuestMemoryRegion region, CancellationToken cancellationToken = default)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS, VhostUserRequest.REM_MEM_REG);
        var payload = new byte[VhostUserSingleMemoryRegion.Size];
        new VhostUserSingleMemoryRegion(Describe(region)).Write(payload);
        return SendAsync(VhostUserRequest.REM_MEM_REG, payload, cancellationToken: cancellationToken);
    }

    private static VhostUserMemoryRegion Describe(GuestMemoryRegion region) =>
        new(region.GuestPhysicalAddress, region.Size, region.UserAddress, region.FileOffset);

    // --- Rings ---------------------------------------------------------------------------------

    /// <summary>
    /// Where ring <paramref name="queue"/> is in our address space: vhost-user ring addresses are
    /// front-end user addresses (vhost-user.rst, "Vring address description"), i.e. the region's
    /// UserAddress plus the offset of the guest-physical address inside it.
    /// </summary>
    public static (ulong Descriptor, ulong Driver, ulong Device) TranslateRing(
        GuestMemory memory, VirtqueueParams queue, bool packed)
    {
        ulong size = queue.Size;
        ulong descriptorLength = 16 * size;
        ulong driverLength = packed ? 4 : 6 + (2 * size);
        ulong deviceLength = packed ? 4 : 6 + (8 * size);
        return (
            ToUserAddress(memory, queue.DescriptorArea, descriptorLength, "descriptor area"),
            ToUserAddress(memory, queue.DriverArea, driverLength, "driver area"),
            ToUserAddress(memory, queue.DeviceArea, deviceLength, "device area"));
    }

    private static ulong ToUserAddress(GuestMemory memory, ulong gpa, ulong length, string what)
    {
        GuestMemoryRegion region = memory.FindRegion(gpa, length)
            ?? throw new ArgumentException($"The queue's {what} [0x{gpa:x}, +0x{length:x}) is not inside one guest memory region.");
        return region.UserAddress + (gpa - region.GuestPhysicalAddress);
    }

    /// <summary>
    /// The SET_VRING_BASE value for <paramref name="state"/> (vhost-user.rst, VHOST_USER_SET_VRING_BASE):
    /// split rings take the next available index the back-end reads; packed rings take bits 0-14
    /// the available index, bit 15 its wrap counter, bits 16-30 the used index, bit 31 its wrap counter.
    /// </summary>
    public static uint EncodeBase(VirtqueueState state, bool packed) =>
        packed
            ? (uint)(state.AvailableIndex & 0x7FFF) | (state.AvailableWrapCounter ? 1u << 15 : 0) |
              ((uint)(state.UsedIndex & 0x7FFF) << 16) | (state.UsedWrapCounter ? 1u << 31 : 0)
            : state.AvailableIndex;

    /// <summary>
    /// Starts one ring: <see cref="SetUpRingAsync"/> (SET_VRING_NUM, ADDR, BASE, CALL, KICK), then
    /// SET_VRING_ENABLE(1) when VHOST_USER_F_PROTOCOL_FEATURES was acked (without it rings start
    /// enabled, vhost-user.rst "Ring states"). SET_FEATURES and the memory table must already be in place.
    /// </summary>
    public async Task StartRingAsync(VhostUserRingSetup ring, CancellationToken cancellationToken = default)
    {
        await SetUpRingAsync(ring, cancellationToken).ConfigureAwait(false);
        if (RingsNeedEnable)
        {
            await SetRingEnableAsync(ring.Index, true, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Sets one ring up without enabling it: SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE,
    /// SET_VRING_CALL, SET_VRING_KICK. The call fd goes before the kick, as QEMU's vhost-user
    /// devices do (they unmask the guest notifiers, which sends SET_VRING_CALL, before
    /// vhost_dev_start sends SET_VRING_KICK): a back-end that starts the ring on its kick, and
    /// finds a request already made available, may complete it at once and must have a call fd
    /// to signal (qemu-storage-daemon drops the connection with "Error writing eventfd" otherwise).
    /// </summary>
    public async Task SetUpRingAsync(VhostUserRingSetup ring, CancellationToken cancellationToken = default)
    {
        await SetRingAddressesAsync(ring.Addresses, cancellationToken).ConfigureAwait(false);
        await SetRingCallAsync(ring.Index, ring.Call, cancellationToken).ConfigureAwait(false);
        await SetRingKickAsync(ring.Index, ring.Kick, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>SET_VRING_NUM, SET_VRING_ADDR and SET_VRING_BASE of one ring: where it is and where it resumes.</summary>
    public async Task SetRingAddressesAsync(VhostUserRingAddresses ring, CancellationToken cancellationToken = default)
    {
        uint index = RingIndex(ring.Index);
        await SendAsync(VhostUserRequest.SET_VRING_NUM, Encode(new VhostUserVringState(index, ring.Size), VhostUserVringState.Size),
            cancellationToken: cancellationToken).ConfigureAwait(false);
        await SendAsync(VhostUserRequest.SET_VRING_ADDR, EncodeRingAddress(ring), cancellationToken: cancellationToken)
            .ConfigureAwait(false);
        await SendAsync(VhostUserRequest.SET_VRING_BASE, Encode(new VhostUserVringState(index, ring.Base), VhostUserVringState.Size),
            cancellationToken: cancellationToken).ConfigureAwait(false);
    }

    /// <summary>SET_VRING_CALL: the eventfd the back-end signals when it used buffers of ring <paramref name="index"/>.</summary>
    public Task SetRingCallAsync(int index, SafeHandle call, CancellationToken cancellationToken = default) =>
        SendU64Async(VhostUserRequest.SET_VRING_CALL, new VhostUserVringFile((byte)RingIndex(index), NoFd: false).ToU64(), [call], cancellationToken);

    /// <summary>SET_VRING_KICK: the eventfd the guest's notifications arrive on; a back-end may start the ring on it.</summary>
    public Task SetRingKickAsync(int index, SafeHandle kick, CancellationToken cancellationToken = default) =>
        SendU64Async(VhostUserRequest.SET_VRING_KICK, new VhostUserVringFile((byte)RingIndex(index), NoFd: false).ToU64(), [kick], cancellationToken);

    /// <summary>SET_STATUS (needs STATUS): the driver's device status byte (virtio 1.2, 2.1).</summary>
    public Task SetStatusAsync(byte status, CancellationToken cancellationToken = default)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.STATUS, VhostUserRequest.SET_STATUS);
        return SendU64Async(VhostUserRequest.SET_STATUS, status, cancellationToken: cancellationToken);
    }

    /// <summary>SET_VRING_KICK/CALL carry the index in bits 0-7 (VHOST_USER_VRING_IDX_MASK).</summary>
    private static uint RingIndex(int index)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(index, (int)VhostUserVringFile.VHOST_USER_VRING_IDX_MASK);
        return (uint)index;
    }

    /// <summary>SET_VRING_ENABLE for ring <paramref name="index"/>.</summary>
    public Task SetRingEnableAsync(int index, bool enable, CancellationToken cancellationToken = default) =>
        SendAsync(VhostUserRequest.SET_VRING_ENABLE, Encode(new VhostUserVringState((uint)index, enable ? 1u : 0u), VhostUserVringState.Size),
            cancellationToken: cancellationToken);

    /// <summary>
    /// Stops one ring: SET_VRING_ENABLE(0) when protocol features were acked, then GET_VRING_BASE,
    /// which stops the ring in the back-end and answers where it stopped. For split rings the used
    /// index is read from the guest's used ring (offset 2 of the device area), where the back-end
    /// published it; for packed rings both halves come from the reply.
    /// </summary>
    public async Task<VirtqueueState> StopRingAsync(
        int index, GuestMemory? memory = null, VirtqueueParams? queue = null, bool packed = false,
        CancellationToken cancellationToken = default)
    {
        if (RingsNeedEnable)
        {
            await SetRingEnableAsync(index, false, cancellationToken).ConfigureAwait(false);
        }

        using VhostUserReply reply = await SendAndReceiveAsync(
            VhostUserRequest.GET_VRING_BASE, Encode(new VhostUserVringState((uint)index, 0), VhostUserVringState.Size),
            cancellationToken: cancellationToken).ConfigureAwait(false);
        VhostUserVringState state = VhostUserVringState.Read(reply.Payload);
        if (state.Index != (uint)index)
        {
            throw new VhostUserProtocolException($"GET_VRING_BASE for ring {index} answered ring {state.Index}.");
        }

        if (packed)
        {
            uint n = state.Num;
            return new VirtqueueState(
                (ushort)(n & 0x7FFF), (ushort)((n >> 16) & 0x7FFF), (n & (1u << 15)) != 0, (n & (1u << 31)) != 0);
        }

        ushort used = memory is not null && queue is not null
            ? memory.ReadUInt16Acquire(queue.DeviceArea + 2)
            : (ushort)state.Num;
        return new VirtqueueState((ushort)state.Num, used);
    }

    /// <summary>RESET_DEVICE (needs RESET_DEVICE): the back-end drops all ring state and acked features.</summary>
    public async Task ResetDeviceAsync(CancellationToken cancellationToken = default)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.RESET_DEVICE, VhostUserRequest.RESET_DEVICE);
        await SendAsync(VhostUserRequest.RESET_DEVICE, cancellationToken: cancellationToken).ConfigureAwait(false);
        AckedFeatures = null;
    }

    // --- Inflight tracking ---------------------------------------------------------------------

    /// <summary>
    /// GET_INFLIGHT_FD for <paramref name="queueCount"/> queues of <paramref name="queueSize"/>:
    /// the back-end answers with the region's description and its fd. Needs INFLIGHT_SHMFD.
    /// Null when the back-end refused: mmap_size 0 and no fd, as our own back-end answers while a
    /// ring runs (the device then runs without inflight tracking). A description that does not
    /// fit the file sent with it is a protocol violation (<see cref="VhostUserInflightRegion.Validate"/>).
    /// </summary>
    public async Task<VhostUserInflightRegion?> GetInflightFdAsync(ushort queueCount, ushort queueSize, CancellationToken cancellationToken = default)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.INFLIGHT_SHMFD, VhostUserRequest.GET_INFLIGHT_FD);
        byte[] payload = Encode(new VhostUserInflight(0, 0, queueCount, queueSize), VhostUserInflight.Size);
        using VhostUserReply reply = await SendAndReceiveAsync(VhostUserRequest.GET_INFLIGHT_FD, payload, cancellationToken: cancellationToken)
            .ConfigureAwait(false);
        VhostUserInflight inflight = VhostUserInflight.Read(reply.Payload);
        if (inflight.MmapSize == 0)
        {
            return null;
        }

        if (FileDescriptors.GetKind(reply.Fds[0]) is not FileKind.RegularFile and var kind)
        {
            // A region is shared memory: a memfd or a file (fstat S_IFREG), never a pipe or a device.
            throw new VhostUserProtocolException($"GET_INFLIGHT_FD reply carries {kind}, not a memory file.");
        }

        if (VhostUserInflightRegion.Validate(inflight.MmapSize, inflight.MmapOffset, MemFd.GetFileSize(reply.Fds[0])) is { } problem)
        {
            throw new VhostUserProtocolException($"GET_INFLIGHT_FD reply describes {problem}.");
        }

        return new VhostUserInflightRegion(reply.TakeFd(0), inflight.MmapSize, inflight.MmapOffset, inflight.NumQueues, inflight.QueueSize);
    }

    /// <summary>SET_INFLIGHT_FD: hands <paramref name="region"/> (back) to the back-end before its rings start.</summary>
    public Task SetInflightFdAsync(VhostUserInflightRegion region, CancellationToken cancellationToken = default)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.INFLIGHT_SHMFD, VhostUserRequest.SET_INFLIGHT_FD);
        byte[] payload = Encode(
            new VhostUserInflight(region.MmapSize, region.MmapOffset, region.NumQueues, region.QueueSize), VhostUserInflight.Size);
        return SendAsync(VhostUserRequest.SET_INFLIGHT_FD, payload, [region.Fd], cancellationToken: cancellationToken);
    }

    /// <summary>True when the negotiated (or given) features select packed rings.</summary>
    public static bool IsPacked(ulong features) => (features & VirtioFeatures.RING_PACKED) != 0;
}
