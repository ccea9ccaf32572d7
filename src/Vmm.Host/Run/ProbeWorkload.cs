using System.Globalization;
using System.Text;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;

namespace Vmm.Host.Run;

/// <summary><c>probe</c>: what the guest driver found and negotiated, and the device's configuration.</summary>
public static class ProbeWorkload
{
    public static string Describe(GuestVm vm, GuestDevice device)
    {
        ArgumentNullException.ThrowIfNull(vm);
        ArgumentNullException.ThrowIfNull(device);
        var text = new StringBuilder();
        CultureInfo c = CultureInfo.InvariantCulture;
        VirtioDeviceId id = device.Location.DeviceId;
        text.AppendLine(c, $"device {device.Source.Kind}: virtio device id {(int)id} ({id}) on {RunOptions.Name(device.Location.Kind)} slot {device.Location.Slot} at 0x{device.Location.Address:x}");
        if (device.Remote is { } remote && device.Source is IHostedDeviceSource source)
        {
            // What the back-end itself offers, vhost-user-only bits included (the guest sees them masked).
            DeviceInfo info = remote.Info;
            text.AppendLine(c, $"  vhost-user socket   {source.Where}");
            string names = FeatureNames.Describe(info.Features, id)
                .Replace("bit26", "LOG_ALL", StringComparison.Ordinal)
                .Replace("bit30", "PROTOCOL_FEATURES", StringComparison.Ordinal);
            text.AppendLine(c, $"  back-end features   0x{info.Features:x16} {names}");
            text.AppendLine(c, $"  protocol features   0x{(ulong)info.ProtocolFeatures:x} negotiated ({info.ProtocolFeatures})");
            text.AppendLine(c, $"  back-end queues     {info.QueueCount}");
            if (info.Config is { Length: > 0 } config)
            {
                text.AppendLine(c, $"  config ({config.Length} bytes)   {Convert.ToHexStringLower(config)}");
            }
        }

        text.AppendLine(c, $"  offered features    0x{device.Driver.DeviceFeatures:x16} {FeatureNames.Describe(device.Driver.DeviceFeatures, id)}");
        text.AppendLine(c, $"  negotiated features 0x{device.Driver.NegotiatedFeatures:x16} {FeatureNames.Describe(device.Driver.NegotiatedFeatures, id)}");
        text.AppendLine(c, $"  status              0x{(byte)device.Driver.ReadStatus():x2} ({device.Driver.ReadStatus()})");
        text.AppendLine(c, $"  queues              {device.Driver.Queues.Count} ({string.Join(", ", device.Driver.Queues.Select(q => $"q{q.Index}: size {q.Queue.Size}, vector {q.Vector}"))})");
        if (id == VirtioDeviceId.Block)
        {
            var blk = new BlkGuest(device, vm.Memory, vm.Allocator);
            VirtioBlkConfig config = blk.Config;
            text.AppendLine(c, $"  capacity            {config.Capacity} sectors ({config.Capacity * VirtioBlk.SectorSize} bytes)");
            text.AppendLine(c, $"  seg_max             {config.SegMax}");
            text.AppendLine(c, $"  blk_size            {config.BlkSize}");
            text.AppendLine(c, $"  num_queues          {config.NumQueues}");
            text.AppendLine(c, $"  writeback           {config.Writeback}");
            text.AppendLine(c, $"  read-only           {(blk.ReadOnly ? "yes" : "no")}");
            text.AppendLine(c, $"  max_discard_sectors {config.MaxDiscardSectors} (segments {config.MaxDiscardSeg})");
            text.AppendLine(c, $"  max_write_zeroes    {config.MaxWriteZeroesSectors} sectors (segments {config.MaxWriteZeroesSeg})");
            string serial = ReadSerial(vm, blk);
            text.AppendLine(c, $"  serial              {(serial.Length == 0 ? "(none)" : serial)}");
        }

        return text.ToString().TrimEnd();
    }

    private static string ReadSerial(GuestVm vm, BlkGuest blk)
    {
        ulong buffer = vm.Allocator.Allocate(VirtioBlk.VIRTIO_BLK_ID_BYTES);
        try
        {
            BlkQueue queue = blk.Queues[0];
            if (queue.TrySubmitGetId(buffer) is null)
            {
                return "(no room in the queue)";
            }

            queue.Kick();
            Vmm.Virtio.Driver.Blk.VirtioBlkRequest request = queue.Complete(Workloads.RequestTimeout);
            if (!request.Succeeded)
            {
                return $"(GET_ID status {request.Status})";
            }

            ReadOnlySpan<byte> id = vm.Memory.GetSpan(buffer, VirtioBlk.VIRTIO_BLK_ID_BYTES);
            int end = id.IndexOf((byte)0);
            return Encoding.ASCII.GetString(end < 0 ? id : id[..end]);
        }
        finally
        {
            vm.Allocator.Free(buffer);
        }
    }
}
