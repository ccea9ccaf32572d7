using Microsoft.Extensions.Logging;

namespace Vmm.VhostUser.Backend;

public sealed partial class VhostUserBackendSession
{
    private static partial class Log
    {
        [LoggerMessage(1, LogLevel.Information, "Front-end disconnected: {Reason}")]
        public static partial void FrontendDisconnected(ILogger logger, string reason);

        [LoggerMessage(2, LogLevel.Warning, "Front-end broke the protocol, closing its connection: {Reason}")]
        public static partial void ProtocolViolation(ILogger logger, string reason);

        [LoggerMessage(3, LogLevel.Warning, "{Request} rejected: {Reason}")]
        public static partial void RequestRejected(ILogger logger, string request, string reason);

        [LoggerMessage(4, LogLevel.Debug, "Features set: 0x{Features:x}")]
        public static partial void FeaturesSet(ILogger logger, ulong features);

        [LoggerMessage(5, LogLevel.Debug, "Protocol features set: 0x{Features:x}")]
        public static partial void ProtocolFeaturesSet(ILogger logger, ulong features);

        [LoggerMessage(6, LogLevel.Debug, "Memory table set: {Regions} regions, {Bytes} bytes")]
        public static partial void MemoryTableSet(ILogger logger, int regions, ulong bytes);

        [LoggerMessage(7, LogLevel.Debug, "Ring {Index} started: size {Size}, avail {Available}, used {Used}")]
        public static partial void RingStarted(ILogger logger, int index, ushort size, ushort available, ushort used);

        [LoggerMessage(8, LogLevel.Debug, "Ring {Index} stopped at avail {Available}, used {Used}")]
        public static partial void RingStopped(ILogger logger, int index, ushort available, ushort used);

        [LoggerMessage(9, LogLevel.Warning, "Device needs a reset (queue {Queue}): {Reason}")]
        public static partial void DeviceFaulted(ILogger logger, int queue, string reason);

        [LoggerMessage(10, LogLevel.Information, "Ring {Index} (size {QueueSize}) tracks inflight I/O; {Resubmitted} requests resubmitted")]
        public static partial void InflightInstalled(ILogger logger, int index, int queueSize, int resubmitted);

        [LoggerMessage(14, LogLevel.Warning, "Dropping the front-end: {Reason}")]
        public static partial void FrontendTooSlow(ILogger logger, string reason);

        [LoggerMessage(15, LogLevel.Warning, "Closing the front-end's connection: {Reason}")]
        public static partial void SessionEnded(ILogger logger, string reason);

        [LoggerMessage(16, LogLevel.Error, "Ring {Index} is stuck in the device: {Reason}")]
        public static partial void RingStuck(ILogger logger, int index, string reason);

        [LoggerMessage(17, LogLevel.Error, "A ring was stuck in the device: the session's guest memory and inflight region stay mapped for the life of the process")]
        public static partial void MemoryKeptForStuckRing(ILogger logger);

        [LoggerMessage(18, LogLevel.Error, "Reporting the fault of queue {Queue} failed: {Reason}")]
        public static partial void FaultReportFailed(ILogger logger, int queue, string reason);

        [LoggerMessage(20, LogLevel.Warning, "Ring {Index}: the error eventfd cannot be signalled (logged once for this fd): {Reason}")]
        public static partial void ErrorFdFailed(ILogger logger, int index, string reason);

        [LoggerMessage(21, LogLevel.Information, "Dirty-page log set: {Bytes} bytes, covering guest memory below 0x{Covered:x}")]
        public static partial void DirtyLogSet(ILogger logger, ulong bytes, ulong covered);

        [LoggerMessage(19, LogLevel.Information, "Memory region {Region} can still shrink (its file is not sealed): mapped under the SIGBUS guard")]
        public static partial void RegionGuarded(ILogger logger, string region);
    }
}
