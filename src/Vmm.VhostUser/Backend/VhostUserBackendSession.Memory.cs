using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Backend;

public sealed partial class VhostUserBackendSession
{
    /// <summary>
    /// SET_MEM_TABLE replaces the whole table. The new table is built aside and swapped in only
    /// when every region mapped, so a bad table leaves the old one (and the rings) as they were.
    /// Running rings are stopped, moved to the new table with their state and started again
    /// (vhost-user.rst, "Ring states": the back-end must support configuration changes while it
    /// processes the rings; QEMU sends SET_MEM_TABLE on memory hot-plug). The old table is
    /// unmapped only once no worker can touch it.
    /// </summary>
    private void SetMemoryTable(VhostUserMessage message)
    {
        VhostUserMemoryRegion[] regions = VhostUserMemoryTable.ReadRegions(message.Payload.Span);
        ulong total = 0;
        foreach (VhostUserMemoryRegion region in regions)
        {
            total = SaturatingAdd(total, region.MemorySize);
        }

        CheckMappedTotal(total, _inflight?.MappedSize ?? 0, "the memory table");
        GuestMemory table = NewMemoryTable();
        try
        {
            for (int i = 0; i < regions.Length; i++)
            {
                AddRegion(table, regions[i], message.TakeFd(i));
            }
        }
        catch
        {
            table.Dispose();
            throw;
        }

        List<BackendVring> paused = PauseRunningRings();
        if (_wedged)
        {
            // A ring that would not stop may still read the old table: it stays mapped, and the
            // session ends (StopRing).
            table.Dispose();
            throw new RequestRejectedException("a ring did not stop, so the memory table cannot be replaced");
        }

        GuestMemory old = _memory;
        _memory = table;
        old.Truncated -= OnMemoryTruncated;
        old.Dispose();
        Log.MemoryTableSet(_logger, regions.Length, table.TotalSize);
        ResumeRings(paused);
    }

    private void AddMemoryRegion(VhostUserMessage message)
    {
        VhostUserSingleMemoryRegion single = VhostUserSingleMemoryRegion.Read(message.Payload.Span);
        if (_memory.Regions.Count >= _options.MaxMemorySlots)
        {
            throw new RequestRejectedException($"all {_options.MaxMemorySlots} memory slots are in use");
        }

        CheckMappedTotal(SaturatingAdd(_memory.TotalSize, single.Region.MemorySize), _inflight?.MappedSize ?? 0, "the memory table with the new region");

        // The region table is copy-on-write, so running rings keep going while a region is added.
        AddRegion(_memory, single.Region, message.TakeFd(0));
    }

    private void RemoveMemoryRegion(ReadOnlySpan<byte> payload)
    {
        VhostUserMemoryRegion region = VhostUserSingleMemoryRegion.Read(payload).Region;

        // "The memory region to be removed is identified by its guest address, user address and
        // size. The mmap offset is ignored." (vhost-user.rst, REM_MEM_REG). Rings may be reading
        // it: stop them first, unmap, then let them go on.
        List<BackendVring> paused = PauseRunningRings();
        if (_wedged)
        {
            throw new RequestRejectedException("a ring did not stop, so no region can be removed");
        }

        try
        {
            GuestMemoryRegion? removed = _memory.RemoveRegion(region.GuestPhysAddr, region.MemorySize, region.UserspaceAddr)
                ?? throw new RequestRejectedException($"no region matches {region}");
            removed.Dispose();
        }
        finally
        {
            ResumeRings(paused);
        }
    }

    /// <summary>
    /// Refuses a mapping that would take the front-end's memory past
    /// <see cref="VhostUserBackendOptions.MaxMappedBytes"/>, before anything is mapped (the
    /// message's fds are closed with it).
    /// </summary>
    private void CheckMappedTotal(ulong memoryBytes, ulong inflightBytes, string what)
    {
        ulong total = SaturatingAdd(memoryBytes, inflightBytes);
        if (total > _options.MaxMappedBytes)
        {
            throw new RequestRejectedException(
                $"{what} would map {total} bytes of front-end memory, more than the limit of {_options.MaxMappedBytes}");
        }
    }

    private static ulong SaturatingAdd(ulong a, ulong b) => a + b < a ? ulong.MaxValue : a + b;

    private void AddRegion(GuestMemory table, in VhostUserMemoryRegion region, SafeFileDescriptor fd)
    {
        string? invalid = region.Validate();
        if (invalid is not null)
        {
            fd.Dispose();
            throw new RequestRejectedException($"memory region {region}: {invalid}");
        }

        try
        {
            GuestMemoryRegion added = table.AddRegion(region.GuestPhysAddr, region.MemorySize, region.UserspaceAddr, fd, region.MmapOffset);
            if (added.IsGuarded)
            {
                Log.RegionGuarded(_logger, added.ToString());
            }
        }
        catch (GuestMemoryException e)
        {
            throw new RequestRejectedException($"memory region {region}: {e.Message}", e);
        }
        catch (PosixException e)
        {
            throw new RequestRejectedException($"memory region {region} cannot be mapped: {e.Message}", e);
        }
    }
}
