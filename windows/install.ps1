#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Install warren as the Windows service "warren".

.DESCRIPTION
    Copies warren.exe to C:\Program Files\warren, keeps the config, the log and the drain state
    in C:\ProgramData\warren (the config is copied there only when none exists), registers the
    service (automatic start, as NT AUTHORITY\LocalService, restarted by the service manager
    when it fails), opens the listen ports in Windows Firewall, and starts the service when
    `warren check` accepts the config. See windows\README.md.

.PARAMETER Binary
    The warren.exe to install. Default: warren.exe beside this script, else
    ..\target\release\warren.exe.

.PARAMETER Config
    The config copied to C:\ProgramData\warren\warren.toml when that file does not exist yet.
    Default: ..\config\warren.toml.

.PARAMETER Ports
    TCP ports opened inbound in Windows Firewall, one rule each. Default: 5672.

.PARAMETER NoStart
    Register the service but do not start it (edit the config first).

.EXAMPLE
    .\windows\install.ps1 -Binary .\target\release\warren.exe -Ports 5672
#>
param(
    [string] $Binary,
    [string] $Config,
    [int[]] $Ports = @(5672),
    [switch] $NoStart
)

$ErrorActionPreference = 'Stop'
$ServiceName = 'warren'
$InstallDir = Join-Path $env:ProgramFiles 'warren'
$DataDir = Join-Path $env:ProgramData 'warren'
$Exe = Join-Path $InstallDir 'warren.exe'
$ConfigPath = Join-Path $DataDir 'warren.toml'
$LogPath = Join-Path $DataDir 'warren.log'

if (-not $Binary) {
    $Binary = Join-Path $PSScriptRoot 'warren.exe'
    if (-not (Test-Path $Binary)) {
        $Binary = Join-Path $PSScriptRoot '..\target\release\warren.exe'
    }
}
if (-not (Test-Path $Binary)) {
    throw "warren.exe not found at ${Binary}: build it with 'cargo build --release' or pass -Binary"
}
if (-not $Config) {
    $Config = Join-Path $PSScriptRoot '..\config\warren.toml'
}
if (Get-Service -Name $ServiceName -ErrorAction SilentlyContinue) {
    throw "the service '$ServiceName' exists already. To upgrade: Stop-Service $ServiceName; copy the new warren.exe to $Exe; Start-Service $ServiceName. To reinstall: run uninstall.ps1 first."
}

# Program files: the binary. Data: config, log, drain state, writable by the service account.
New-Item -ItemType Directory -Force -Path $InstallDir, $DataDir | Out-Null
Copy-Item -Path $Binary -Destination $Exe -Force
if (-not (Test-Path $ConfigPath)) {
    if (-not (Test-Path $Config)) {
        throw "no config at $ConfigPath and none to copy at ${Config}: pass -Config"
    }
    Copy-Item -Path $Config -Destination $ConfigPath
    Write-Host "copied $Config to ${ConfigPath}: edit the listen address and the backends"
}
& icacls.exe $DataDir /grant '*S-1-5-19:(OI)(CI)M' | Out-Null   # S-1-5-19 = LocalService
if ($LASTEXITCODE -ne 0) { throw "icacls failed to grant LocalService access to $DataDir" }

# The service: the manager starts `warren run --service`, logs go to a file (no console).
$BinaryPath = "`"$Exe`" --log-file `"$LogPath`" run --service --config `"$ConfigPath`""
New-Service -Name $ServiceName `
    -BinaryPathName $BinaryPath `
    -DisplayName 'warren (RabbitMQ load balancer)' `
    -Description 'TCP load balancer for RabbitMQ: health probes, drain/undrain, failover hooks, metrics.' `
    -StartupType Automatic | Out-Null
# Least privilege: LocalService may listen on any port and has no password to give.
& sc.exe config $ServiceName obj= 'NT AUTHORITY\LocalService' | Out-Null
if ($LASTEXITCODE -ne 0) { throw "sc.exe config failed ($LASTEXITCODE)" }
# Recovery: restart after 5 s, 5 s, then 30 s; the failure count resets after a day.
& sc.exe failure $ServiceName reset= 86400 actions= restart/5000/restart/5000/restart/30000 | Out-Null
if ($LASTEXITCODE -ne 0) { throw "sc.exe failure failed ($LASTEXITCODE)" }
# Also when warren stops by itself with an error (a bad config at start), not only on a crash.
& sc.exe failureflag $ServiceName 1 | Out-Null
if ($LASTEXITCODE -ne 0) { throw "sc.exe failureflag failed ($LASTEXITCODE)" }

# Firewall: inbound TCP to the listen ports, for warren.exe only.
foreach ($Port in $Ports) {
    $RuleName = "warren-tcp-$Port"
    Get-NetFirewallRule -Name $RuleName -ErrorAction SilentlyContinue | Remove-NetFirewallRule
    New-NetFirewallRule -Name $RuleName -DisplayName "warren (TCP $Port)" `
        -Direction Inbound -Protocol TCP -LocalPort $Port -Program $Exe -Action Allow | Out-Null
}

& $Exe check --config $ConfigPath
$ConfigOk = ($LASTEXITCODE -eq 0)
if ($NoStart -or -not $ConfigOk) {
    if (-not $ConfigOk) { Write-Warning "the config has errors (above): fix ${ConfigPath}" }
    Write-Host "installed, not started: check with '$Exe check --config $ConfigPath', then Start-Service $ServiceName"
} else {
    Start-Service -Name $ServiceName
    Write-Host "installed and started; log: $LogPath"
}
